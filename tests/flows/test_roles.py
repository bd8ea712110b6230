"""Three roles by a stable hash: stable under append, replace and duplicates handled, diffs per role."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from flows.config import SplitParams
from flows.data.roles import ROLES, assign_role, image_key
from flows.data.store import DataStore

from ..projects import add_folders, git, init_project
from ..synthetic import write_flat_folders, write_mvtec_folder

PARAMS = """\
defaults:
  data: {min_train_images: 3, min_validation_images: 1}
lines: {}
"""
SPLIT = SplitParams()


@pytest.fixture
def project(tmp_path: Path) -> DataStore:
    return init_project(tmp_path / "project", tmp_path / "remote", PARAMS)


def roles(store: DataStore, line: str, rev: str | None = None) -> dict[str, str]:
    """{label/name: role} of a version, read from its folders."""
    path = store.pull(line, rev).path
    return {image_key(label.name, image.name): role
            for role in ROLES if (path / role).is_dir()
            for label in (path / role).iterdir() for image in label.iterdir()}


def data_add(store: DataStore, line: str, normal: Path | None, defects: Path | None = None,
             masks: Path | None = None, *flags: str) -> int:
    return add_folders(store.root, line, normal, defects, masks, *flags)


def test_role_shares_follow_the_fractions_and_defects_never_train() -> None:
    keys = [f"good/{i:05d}.png" for i in range(20000)]
    normal = Counter(assign_role(k, False, 3, 0.7, 0.1, 0.5) for k in keys)
    defect = Counter(assign_role(k.replace("good", "dent"), True, 3, 0.7, 0.1, 0.5) for k in keys)
    assert abs(normal["train"] / 20000 - 0.7) < 0.01 and abs(normal["validation"] / 20000 - 0.1) < 0.01
    assert set(defect) == {"validation", "test"} and abs(defect["validation"] / 20000 - 0.5) < 0.01
    other_seed = [assign_role(k, False, 4, 0.7, 0.1, 0.5) for k in keys[:200]]
    assert other_seed != [assign_role(k, False, 3, 0.7, 0.1, 0.5) for k in keys[:200]]


def test_append_never_moves_an_image_and_keeps_the_old_test_set(project: DataStore, tmp_path: Path) -> None:
    normal, defects, masks = write_flat_folders(tmp_path / "week1", 40, 10, seed=1)
    assert data_add(project, "alpha", normal, defects, masks) == 0
    before = roles(project, "alpha")
    assert sorted(set(before.values())) == ["test", "train", "validation"]
    week2, new_defects, new_masks = write_flat_folders(tmp_path / "week2", 60, 14, seed=2)
    for folder in (week2, new_defects, new_masks):  # new names for new images
        for path in folder.iterdir():
            path.rename(path.with_name("w2" + path.name))
    assert data_add(project, "alpha", week2, new_defects, new_masks, "--append") == 0
    after = roles(project, "alpha")
    assert len(after) == len(before) + 74
    assert {key: after[key] for key in before} == before, "no existing image changed role"
    old_test = {key for key, role in before.items() if role == "test"}
    assert old_test < {key for key, role in after.items() if role == "test"}
    for key in after.keys() - before.keys():  # new images follow the same stable rule
        defect = not key.startswith("good/")
        assert after[key] == assign_role(key, defect, SPLIT.seed, SPLIT.train, SPLIT.validation,
                                         SPLIT.defect_validation)


def test_importing_everything_at_once_gives_the_roles_an_append_gave(project: DataStore,
                                                                      tmp_path: Path) -> None:
    normal, defects, _ = write_flat_folders(tmp_path / "all", 30, 8, masks=False, seed=3)
    first, later = tmp_path / "first", tmp_path / "later"
    for image in sorted(normal.iterdir()):
        target = first if int(image.stem[1:]) < 20 else later
        target.mkdir(exist_ok=True)
        shutil.copy(image, target)
    assert data_add(project, "alpha", first) == 0
    assert data_add(project, "alpha", later, None, None, "--append") == 0
    assert data_add(project, "beta", normal) == 0
    assert roles(project, "alpha") == roles(project, "beta")


def test_append_refuses_a_changed_file_unless_replace_and_skips_duplicates(
        project: DataStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    normal, _, _ = write_flat_folders(tmp_path / "v1", 30, 0, seed=4)
    assert data_add(project, "alpha", normal) == 0
    before, head = roles(project, "alpha"), git(project.root, "rev-parse", "HEAD")
    changed = tmp_path / "changed"
    changed.mkdir()
    pixels = np.asarray(Image.open(normal / "n005.png")).copy()
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(changed / "n005.png")
    shutil.copy(normal / "n006.png", changed / "copy-of-n006.png")  # same content, other name
    capsys.readouterr()

    assert data_add(project, "alpha", changed, None, None, "--append") == 1
    error = capsys.readouterr().err
    where = f"{before['good/n005.png']}/good/n005.png"
    assert f"{changed / 'n005.png'}: {where} exists with other content" in error
    assert git(project.root, "rev-parse", "HEAD") == head, "a refused append commits nothing"

    assert data_add(project, "alpha", changed, None, None, "--append", "--replace") == 0
    output = capsys.readouterr().out
    assert f"replaced 1: {where}" in output
    original = f"{before['good/n006.png']}/good/n006.png"
    assert f"{changed / 'copy-of-n006.png'}: same content as {original}" in output
    assert roles(project, "alpha") == before, "the replacement keeps its role; the duplicate is not added"
    replaced = project.pull("alpha").path / before["good/n005.png"] / "good" / "n005.png"
    assert (np.asarray(Image.open(replaced)) == pixels).all()

    assert main(["--root", str(project.root), "data", "diff", "alpha", "HEAD~1"]) == 0
    table = capsys.readouterr().out.splitlines()
    changed_role = before["good/n005.png"]
    for row in table[2:]:
        role, *counts = row.split()
        assert [int(c) for c in counts] == ([0, 0, 1, 0] if role == changed_role else [0, 0, 0, 0]), row


def test_diff_counts_images_added_per_role(project: DataStore, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    normal, defects, masks = write_flat_folders(tmp_path / "v1", 30, 6, seed=5)
    assert data_add(project, "alpha", normal, defects, masks) == 0
    first = roles(project, "alpha")
    extra, extra_defects, extra_masks = write_flat_folders(tmp_path / "v2", 12, 4, seed=6)
    for folder in (extra, extra_defects, extra_masks):
        for path in folder.iterdir():
            path.rename(path.with_name("x" + path.name))
    assert data_add(project, "alpha", extra, extra_defects, extra_masks, "--append") == 0
    added = Counter(role for key, role in roles(project, "alpha").items() if key not in first)
    capsys.readouterr()
    assert main(["--root", str(project.root), "data", "diff", "alpha", "HEAD~1", "HEAD"]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    rows = {row.split()[0]: [int(c) for c in row.split()[1:]] for row in table}
    assert rows == {role: [added[role], 0, 0, 0] for role in ROLES} | {"masks": [4, 0, 0, 0]}


def test_defect_images_with_and_without_masks_in_one_line(project: DataStore, tmp_path: Path) -> None:
    normal, defects, masks = write_flat_folders(tmp_path / "mixed", 30, 8, seed=7)
    for mask in sorted(masks.iterdir())[:3]:
        mask.unlink()  # three defects are labelled per image only
    assert data_add(project, "alpha", normal, defects, masks) == 0
    path = project.pull("alpha").path
    assert len(list((path / "ground_truth" / "defect").iterdir())) == 5
    assert sum(1 for role in ("validation", "test") for _ in (path / role / "defect").glob("*.png")) == 8


def test_masks_arrive_later_for_images_already_in_the_line(project: DataStore, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    normal, defects, masks = write_flat_folders(tmp_path / "v1", 30, 6, seed=10)
    assert data_add(project, "alpha", normal, defects) == 0  # inspected per image first
    assert data_add(project, "alpha", None, defects, masks, "--append") == 0
    assert "added 6 mask(s) to images already in the line" in capsys.readouterr().out
    path = project.pull("alpha").path
    assert sorted(p.name for p in (path / "ground_truth" / "defect").iterdir()) == sorted(
        p.name for p in masks.iterdir())


def test_one_drop_cannot_hold_two_different_images_under_one_name(project: DataStore, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, defects, _ = write_flat_folders(tmp_path / "drop", 0, 4, masks=False, seed=11)
    normal, _, _ = write_flat_folders(tmp_path / "normal", 30, 0, seed=12)
    kind = defects / "defect"
    kind.mkdir()
    Image.fromarray(255 - np.asarray(Image.open(defects / "d000.png"))).save(kind / "d000.png")  # twice
    assert data_add(project, "alpha", normal, defects) == 1
    assert "defect/d000.png exists with other content" in capsys.readouterr().err
    assert not project.pointer("alpha").exists()


def test_defect_images_sharing_a_stem_are_refused_since_masks_pair_by_stem(
        project: DataStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    normal, defects, _ = write_flat_folders(tmp_path / "drop", 30, 3, masks=False, seed=13)
    Image.open(defects / "d000.png").convert("RGB").save(defects / "d000.jpg", quality=90)
    assert data_add(project, "alpha", normal, defects) == 1
    assert "has the same stem, and masks are paired with images by stem" in capsys.readouterr().err


def test_separate_folders_report_orphan_masks_and_stray_files(project: DataStore, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    normal, defects, masks = write_flat_folders(tmp_path / "drop", 30, 3, seed=14)
    (masks / "d000_mask.png").rename(masks / "d0_mask.png")  # a typo: it matches no image
    (normal / "README.txt").write_text("shift 2")
    assert data_add(project, "alpha", normal, defects, masks) == 1
    error = capsys.readouterr().err
    assert f"{masks / 'd0_mask.png'}: mask without a defect image of that name" in error
    assert f"{normal / 'README.txt'}: stray file" in error and "2 problem(s)" in error


def test_an_mvtec_source_reusing_names_across_splits_keeps_every_image(project: DataStore,
                                                                       tmp_path: Path) -> None:
    source = write_mvtec_folder(tmp_path / "mvtec", 6, 3, 2, n_validation=2)
    for split, prefix in (("train", "n"), ("test", "t"), ("validation", "v")):  # MVTec AD: 000.png
        for image in (source / split / "good").iterdir():
            image.rename(image.with_name(image.name.removeprefix(prefix)))
    assert main(["--root", str(project.root), "data", "add", "alpha", str(source)]) == 0
    stored = roles(project, "alpha")
    assert len(stored) == 6 + 2 + 3 + 2 + 2
    test_keys = {key for key in stored if key.startswith("good/test_")}
    assert test_keys == {f"good/test_{i:03d}.png" for i in range(3)}
