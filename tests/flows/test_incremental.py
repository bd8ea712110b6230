"""Incremental refits (flows.model.incremental): a retrain after training images were added and removed
embeds only those, and equals a refit from all the images."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from flows.cli import main
from flows.config import FitParams
from flows.model.evaluate import evaluation_images
from flows.model.features import FEATURES, SUFFIX, image_digest
from flows.model.incremental import KeptFit, StatisticsStore, plan_refit
from flows.registry.registry import Registry, model_name
from padim_plugin.statistics import load_statistics

from ..projects import git, init_project, tiny_params
from ..synthetic import Synthetic, save, write_mvtec_folder

REMOVED, ADDED = 3, 6


def train_images(snapshot: Path) -> dict[str, str]:
    """{path within the line: md5} of a data snapshot's train role, read from the files."""
    return {path.relative_to(snapshot).as_posix(): hashlib.md5(path.read_bytes()).hexdigest()
            for path in sorted((snapshot / "train").rglob("*.png"))}


def snapshot(root: Path, rev: str) -> Path:
    md5 = git(root, "show", f"{rev}:data/alpha.dvc").split("md5: ")[1].split()[0].removesuffix(".dir")
    return root / ".padim" / "data" / "alpha" / md5


@pytest.fixture
def two_versions(tmp_path: Path, prefect_harness: None) -> tuple[Path, str]:
    """A project whose line alpha has a fitted first version, and a second version committed that
    lacks 3 of its training images and has 6 new normal images (some of which go to validation
    or test). Returns the project and the first version's commit."""
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", tiny_params("alpha"))
    first = write_mvtec_folder(tmp_path / "v1", 24, 4, 4, seed=0, n_validation=4)
    assert main(["--root", str(root), "data", "add", "alpha", str(first)]) == 0
    first_rev = git(root, "rev-parse", "HEAD")
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    second = tmp_path / "v2"
    shutil.copytree(first, second)
    fitted = sorted((snapshot(root, first_rev) / "train" / "good").iterdir())
    for image in fitted[:REMOVED]:
        (second / "train" / "good" / image.name).unlink()
    synthetic = Synthetic(64, seed=7)
    for i in range(ADDED):
        save(synthetic.normal(), second / "train" / "good" / f"n{100 + i:03d}.png")
    assert main(["--root", str(root), "data", "add", "alpha", str(second)]) == 0
    return root, first_rev


def latest_run(root: Path) -> tuple[dict[str, str], dict[str, float]]:
    registry = Registry(root)
    found = registry.client.search_model_versions(f"name = '{model_name('alpha')}'")
    run = registry.client.get_run(max(found, key=lambda v: int(v.version)).run_id)
    return run.data.tags, run.data.metrics


def kept_of_latest(root: Path) -> Path:
    tags, _ = latest_run(root)
    return StatisticsStore(root).folder(tags["padim.cache_key"])


def test_a_retrain_after_added_and_removed_images_embeds_only_those_and_equals_a_full_refit(
        two_versions: tuple[Path, str], tmp_path: Path) -> None:
    root, first_rev = two_versions
    before = train_images(snapshot(root, first_rev))
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    after = train_images(snapshot(root, "HEAD"))
    added = {path for path, md5 in after.items() if before.get(path) != md5}
    removed = {path for path, md5 in before.items() if after.get(path) != md5}
    assert len(removed) == REMOVED and 0 < len(added) <= ADDED
    tags, incremental_metrics = latest_run(root)
    assert tags["padim.fit.path"] == "incremental", tags.get("padim.fit.reason")
    assert (int(tags["padim.fit.added"]), int(tags["padim.fit.removed"])) == (len(added), len(removed))
    assert incremental_metrics["fit_images_embedded"] == len(added) + len(removed)
    incremental = load_statistics(shutil.copytree(kept_of_latest(root), tmp_path / "incremental"))

    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  alpha: {}", "  alpha: {fit: {incremental: false}}"))
    git(root, "commit", "-qam", "refit alpha from all its images")
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    tags, full_metrics = latest_run(root)
    assert tags["padim.fit.path"] == "full" and "fit.incremental: false" in tags["padim.fit.reason"]
    assert full_metrics["fit_images_embedded"] == len(after)
    full = load_statistics(kept_of_latest(root))

    assert incremental.n_samples == full.n_samples == len(after)
    difference = torch.linalg.matrix_norm(incremental.covariance() - full.covariance())
    assert (difference / torch.linalg.matrix_norm(full.covariance())).max() <= 1e-6
    # the same metrics to float32 precision: the batch sums are rounded in float32 before they
    # reach float64, so any two fits that batch the images differently differ by that much
    scores = {name: value for name, value in full_metrics.items() if name != "fit_images_embedded"}
    assert scores.keys() == incremental_metrics.keys() - {"fit_images_embedded"}
    for name, value in scores.items():
        assert incremental_metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_a_retrain_embeds_only_new_validation_and_test_images_and_keeps_those_of_its_version(
        two_versions: tuple[Path, str]) -> None:
    root, _ = two_versions
    kept = root / FEATURES / "alpha"
    before = {path.name: path.stat().st_mtime_ns for path in kept.rglob(f"*{SUFFIX}")}
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    after = {path.name: path.stat().st_mtime_ns for path in kept.rglob(f"*{SUFFIX}")}
    current = {image_digest(path) + SUFFIX for path in evaluation_images(snapshot(root, "HEAD"))}
    assert after.keys() == current  # one config: the candidate's and the champion's backbone
    seen = before.keys() & current
    assert seen and {name: after[name] for name in seen} == {name: before[name] for name in seen}


def test_a_downdate_that_would_lose_precision_falls_back_to_a_full_refit_and_says_so(
        two_versions: tuple[Path, str]) -> None:
    root, _ = two_versions
    params = root / "params.yaml"  # no variance may fall below 99.99% of what it was: any removal fails
    strict = "  alpha: {fit: {min_kept_variance: 0.9999}}"
    params.write_text(params.read_text().replace("  alpha: {}", strict))
    git(root, "commit", "-qam", "alpha: stricter downdates")
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    tags, metrics = latest_run(root)
    assert tags["padim.fit.path"] == "full"
    reason = tags["padim.fit.reason"]
    assert "refit from the images" in reason and "variance of channel" in reason
    assert metrics["fit_images_embedded"] == len(train_images(snapshot(root, "HEAD")))


def test_statistics_kept_by_a_fit_on_another_machine_are_found_through_the_registry(
        two_versions: tuple[Path, str]) -> None:
    """This machine lost its kept statistics (or never had them): the champion's run holds them."""
    root, _ = two_versions
    shutil.rmtree(root / ".padim" / "statistics")
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    tags, _ = latest_run(root)
    assert tags["padim.fit.path"] == "incremental", tags.get("padim.fit.reason")
    assert int(tags["padim.fit.removed"]) == REMOVED


def test_only_the_statistics_behind_the_champion_and_the_latest_version_are_kept(
        two_versions: tuple[Path, str]) -> None:
    root, _ = two_versions
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("  alpha: {}", "  alpha: {fit: {incremental: false}}"))
    git(root, "commit", "-qam", "refit alpha from all its images")
    assert main(["--root", str(root), "retrain", "alpha"]) == 0
    registry = Registry(root)
    found = registry.client.search_model_versions(f"name = '{model_name('alpha')}'")
    by_version = {str(version.version): version for version in found}
    behind = {str(registry.champion("alpha").version), max(by_version, key=int)}
    assert len(by_version) == 3 and len(behind) in (1, 2)
    expected = {by_version[version].tags["padim.cache_key"] for version in behind}
    assert {fit.key for fit in StatisticsStore(root).kept("alpha")} == expected
    for version, found_version in by_version.items():
        artifacts = {item.path for item in registry.client.list_artifacts(found_version.run_id)}
        assert ("statistics" in artifacts) == (version in behind), version
        assert found_version.tags["padim.statistics"] == ("kept" if version in behind else "deleted")


# -- plan_refit: which kept fit a refit starts from, and when it refits from all images -----------

def kept(key: str, images: dict[str, str]) -> KeptFit:
    return KeptFit(key, Path(key), "alpha", "config", f"md5-{key}", "rev", images, 0)


IMAGES = {f"train/good/n{i}.png": f"m{i}" for i in range(10)}


def test_plan_starts_from_the_kept_fit_needing_the_fewest_images_embedded() -> None:
    older = kept("older", {path: md5 for path, md5 in list(IMAGES.items())[:5]})
    newer = kept("newer", dict(list(IMAGES.items())[:8]) | {"train/good/gone.png": "x"})
    plan = plan_refit(IMAGES, [older, newer], FitParams())
    assert plan.base == newer
    assert plan.added == ("train/good/n8.png", "train/good/n9.png")
    assert plan.removed == ("train/good/gone.png",)


def test_plan_counts_a_changed_file_as_removed_and_added() -> None:
    plan = plan_refit(IMAGES, [kept("base", IMAGES | {"train/good/n0.png": "old"})], FitParams())
    assert (plan.added, plan.removed) == (("train/good/n0.png",), ("train/good/n0.png",))


def test_plan_refits_from_all_images_when_too_many_kept_ones_were_removed() -> None:
    base = kept("base", IMAGES | {f"train/good/r{i}.png": "r" for i in range(6)})  # 6 of 16 removed
    assert plan_refit(IMAGES, [base], FitParams(max_removed_share=0.5)).base == base
    plan = plan_refit(IMAGES, [base], FitParams(max_removed_share=0.25))
    assert plan.base is None and "6 of the 16 images" in plan.reason and "max_removed_share" in plan.reason


def test_plan_refits_from_all_images_when_that_embeds_no_more() -> None:
    base = kept("base", {f"train/good/old{i}.png": "o" for i in range(3)})
    plan = plan_refit(dict(list(IMAGES.items())[:4]), [base], FitParams())
    assert plan.base is None and "would embed 7 images, a refit 4" in plan.reason


def test_plan_refits_from_all_images_without_kept_fits_or_when_switched_off() -> None:
    assert "no statistics kept" in plan_refit(IMAGES, [], FitParams()).reason
    off = plan_refit(IMAGES, [kept("base", IMAGES)], FitParams(incremental=False))
    assert off.base is None and "fit.incremental: false" in off.reason
