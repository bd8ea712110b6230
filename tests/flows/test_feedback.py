"""padim-mlops feedback: operators' verdicts become the line's next data version, with provenance."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.data.store import DataStore
from flows.events import DATA_COMMITTED
from flows.feedback import PROVENANCE_COLUMNS
from flows.registry.registry import Registry, model_name
from padim_plugin.images import decode_image
from padim_plugin.mvtec import PROVENANCE
from padim_plugin.score_log import ScoreLog, ScoreRow, pixels_digest

from ..prefect_events import events_about
from ..projects import git, init_project, padim, tiny_params
from ..synthetic import Synthetic, save, write_mvtec_folder

SCORED_AT = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def sheet(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=sorted({key for row in rows for key in row}))
        writer.writeheader()
        writer.writerows(rows)
    return path


def provenance(root: Path, line: str = "alpha") -> list[dict[str, str]]:
    """The committed version's provenance.csv rows."""
    with (DataStore(root).pull(line).path / PROVENANCE).open(newline="") as stream:
        return list(csv.DictReader(stream))


def latest_metrics(root: Path) -> dict[str, float]:
    registry = Registry(root)
    found = registry.client.search_model_versions(f"name = '{model_name('alpha')}'")
    return registry.client.get_run(max(found, key=lambda v: int(v.version)).run_id).data.metrics


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """Line alpha with one committed data version, and nothing fitted."""
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", tiny_params("alpha"))
    first = write_mvtec_folder(tmp_path / "v1", 24, 4, 4, n_validation=4)
    assert padim(root, "data", "add", "alpha", first) == 0
    return root


def log_images(root: Path, images: list[Path], keep_images: bool, version: str = "3") -> ScoreLog:
    """Rows for ``images`` as a champion ``version`` scored them in production (flagged)."""
    log = ScoreLog(root / ".padim" / "production")
    log.append("alpha", [ScoreRow(SCORED_AT, version, "md5", 0.8, 1, 12.0, pixels_digest(decode_image(image)),
                                  f"cam-{i}", image.read_bytes() if keep_images else None)
                         for i, image in enumerate(images)])
    return log


def test_feedback_becomes_a_data_version_with_provenance_and_the_next_retrain_counts_its_images(
        project: Path, tmp_path: Path, prefect_harness: None) -> None:
    assert padim(project, "retrain", "alpha") == 0
    before = latest_metrics(project)
    synthetic = Synthetic(64, seed=11)
    parts = []
    for i in range(8):
        save(synthetic.normal(), tmp_path / "parts" / f"part{i}.png")
        parts.append(tmp_path / "parts" / f"part{i}.png")
    defect, _ = synthetic.defect()
    save(defect, tmp_path / "parts" / "scratched.png")
    assert padim(project, "predict", "alpha", *parts, tmp_path / "parts" / "scratched.png",
                 "--out", tmp_path / "scored") == 0
    review = tmp_path / "review.csv"
    assert padim(project, "review", "alpha", "--limit", "20", "--out", review) == 0
    with review.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 9
    for row in rows:
        scratched = row["image"].endswith("scratched.png")
        row |= {"verdict": "defect" if scratched else "normal", "defect_kind": "scratch" if scratched else ""}
    head = git(project, "rev-parse", "HEAD")

    assert padim(project, "feedback", "alpha", sheet(review, rows), "--by", "operator-7") == 0

    assert git(project, "rev-parse", "HEAD~1") == head  # one new commit: the data version
    ours = {"root": str(project.resolve()), "source": "feedback"}
    announced = [event["payload"]["rev"] for event in events_about(
        "alpha", DATA_COMMITTED, lambda payload: ours.items() <= payload.items(), at_least=1)]
    assert announced == [git(project, "rev-parse", "HEAD")]
    recorded = provenance(project)
    assert len(recorded) == 9
    assert list(recorded[0]) == ["stored", *PROVENANCE_COLUMNS]
    assert {row["reviewed_by"] for row in recorded} == {"operator-7"}
    assert {row["model_version"] for row in recorded} == {"1"}  # the champion that scored them
    scratched = [row for row in recorded if row["verdict"] == "defect"]
    assert len(scratched) == 1 and scratched[0]["stored"].split("/")[:2] in (["validation", "scratch"],
                                                                           ["test", "scratch"])
    by_role = {role: sum(row["stored"].startswith(f"{role}/good/") for row in recorded)
               for role in ("train", "validation", "test")}
    assert sum(by_role.values()) == 8

    assert padim(project, "retrain", "alpha") == 0
    after = latest_metrics(project)
    assert after["train_images"] == before["train_images"] + by_role["train"]
    assert after["validation_normal_images"] == before["validation_normal_images"] + by_role["validation"]
    assert after["test_normal_images"] == before["test_normal_images"] + by_role["test"]
    defects_before = before["validation_defect_images"] + before["test_defect_images"]
    assert after["validation_defect_images"] + after["test_defect_images"] == defects_before + 1


def test_images_named_by_digest_come_from_the_logs_kept_copies_and_duplicates_are_skipped(
        project: Path, tmp_path: Path) -> None:
    synthetic = Synthetic(64, seed=12)
    images = [tmp_path / f"frame{i}.png" for i in range(3)]
    for image in images:
        save(synthetic.normal(), image)
    log = log_images(project, images, keep_images=True)
    digests = sorted(log.read("alpha").column("image_digest").to_pylist())
    rows = [{"image": digest, "verdict": "normal"} for digest in digests]
    assert padim(project, "feedback", "alpha", sheet(tmp_path / "s.csv", rows)) == 0
    assert sorted(row["image_digest"] for row in provenance(project)) == digests
    assert {row["source"] for row in provenance(project)} == {"cam-0", "cam-1", "cam-2"}
    head = git(project, "rev-parse", "HEAD")

    assert padim(project, "feedback", "alpha", sheet(tmp_path / "again.csv", rows)) == 0

    assert len(provenance(project)) == 3  # nothing added twice
    assert git(project, "rev-parse", "HEAD") == head


def test_a_bad_sheet_is_refused_naming_each_bad_row_and_writes_nothing(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "frame.png"
    save(Synthetic(64, seed=13).normal(), image)
    log_images(project, [image], keep_images=False)
    digest = pixels_digest(decode_image(image))
    rows = [{"image": str(image), "verdict": "ok"},
            {"image": str(tmp_path / "missing.png"), "verdict": "normal"},
            {"image": digest, "verdict": "defect"},
            {"image": str(image), "verdict": ""}]
    head = git(project, "rev-parse", "HEAD")

    assert padim(project, "feedback", "alpha", sheet(tmp_path / "bad.csv", rows)) == 1

    error = capsys.readouterr().err
    assert "bad.csv, line 2: verdict 'ok' is neither normal nor defect" in error
    assert f"bad.csv, line 3: image {tmp_path / 'missing.png'} does not exist" in error
    assert "line 4: image " in error and "kept no copy of it (production.keep_images is false)" in error
    assert "line 5" not in error  # no verdict yet: left for later
    assert git(project, "rev-parse", "HEAD") == head
    assert git(project, "status", "--porcelain", "data") == ""
