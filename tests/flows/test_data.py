"""Product-line data with real git, real DVC and a real local remote, in temporary folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.config import load_params
from flows.data.store import DataStore, DataVersionError
from flows.data.validation import DataValidationError, check_line_name, validate_line
from padim_plugin.mvtec import mvtec_samples

from ..mtd import MTD
from ..projects import contents, git, init_project, padim
from ..synthetic import write_mvtec_folder

PARAMS = """\
defaults:
  data: {min_train_images: 3, min_validation_images: 1}
lines:
  alpha: {}
"""


@pytest.fixture
def project(tmp_path: Path) -> DataStore:
    return init_project(tmp_path / "project", tmp_path / "remote", PARAMS)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def add(store: DataStore, line: str, source: Path, *extra: str) -> int:
    return padim(store.root, "data", "add", line, source, *extra)


def test_add_push_then_pull_into_a_clean_clone_restores_identical_files(project: DataStore,
                                                                         tmp_path: Path) -> None:
    source = write_mvtec_folder(tmp_path / "alpha_v1", 5, 2, 2, n_validation=1)
    assert add(project, "alpha", source) == 0
    md5 = project.md5("alpha", "HEAD")
    assert md5.endswith(".dir") and "data: alpha version" in git(project.root, "log", "-1", "--format=%s")
    # a fresh clone has neither the workspace copy nor the cache: only the remote has the files
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project.root), str(clone))
    assert not (clone / "data" / "alpha").exists() and not (clone / ".dvc" / "cache").exists()
    pulled = DataStore(clone).pull("alpha")
    assert pulled.md5 == md5
    assert files(pulled.path) == files(project.line_dir("alpha"))
    assert contents(pulled.path) == contents(source)
    assert pulled.rev == git(clone, "rev-parse", "HEAD")


def test_new_version_of_one_line_leaves_the_others_and_old_revisions_intact(project: DataStore,
                                                                             tmp_path: Path) -> None:
    v1 = write_mvtec_folder(tmp_path / "alpha_v1", 5, 2, 2, seed=1, n_validation=1)
    beta = write_mvtec_folder(tmp_path / "beta", 4, 2, 1, seed=2, n_validation=1)
    assert add(project, "alpha", v1) == 0
    assert add(project, "beta", beta) == 0
    first = git(project.root, "rev-parse", "HEAD")
    beta_md5 = project.md5("beta")
    v2 = write_mvtec_folder(tmp_path / "alpha_v2", 6, 2, 2, seed=3, n_validation=1)
    assert add(project, "alpha", v2) == 0
    assert project.md5("beta") == beta_md5
    assert project.md5("alpha") != project.md5("alpha", first)
    shutil.rmtree(project.root / ".dvc" / "cache")
    shutil.rmtree(project.root / "data" / "alpha")
    assert contents(project.pull("alpha", first).path) == contents(v1)
    assert contents(project.pull("alpha").path) == contents(v2)
    assert contents(project.pull("beta").path) == contents(beta)
    assert "beta" in load_params(project.root / "params.yaml").lines  # registered on first add


def test_invalid_data_gets_one_error_listing_every_bad_file(project: DataStore, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_mvtec_folder(tmp_path / "bad", 2, 2, 3, n_validation=1)
    (bad / "train" / "good" / "broken.png").write_bytes(b"not an image")
    (bad / "test" / "spot" / "notes.txt").write_text("stray")
    (bad / "ground_truth" / "spot" / "t000_mask.png").unlink()  # a mask is optional: no problem
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad / "ground_truth" / "spot" / "t001_mask.png")
    grey = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(bad / "ground_truth" / "spot" / "t002_mask.png")
    Image.fromarray(grey).save(bad / "ground_truth" / "spot" / "lost_mask.png")
    params_before = (project.root / "params.yaml").read_text()
    head_before = git(project.root, "rev-parse", "HEAD")

    # the source's own structure is checked first, naming the user's files
    assert add(project, "gamma", bad) == 1
    message = capsys.readouterr().err
    for expected in (f"{bad}/test/spot/notes.txt: stray file", f"{bad}/ground_truth/spot/lost_mask.png: mask"
                     " without an image"):
        assert expected in message, expected
    assert "2 problem(s)" in message
    (bad / "test" / "spot" / "notes.txt").unlink()
    (bad / "ground_truth" / "spot" / "lost_mask.png").unlink()
    # then the staged line: every image decodes, masks match, enough images per role
    assert add(project, "gamma", bad) == 1
    message = capsys.readouterr().err
    for expected in ("normal training images, at least 3 needed", "train/good/broken.png: not an image",
                     "t001_mask.png: size (10, 10) differs", "t002_mask.png: not binary"):
        assert expected in message, expected
    assert "t000" not in message
    assert str(bad) in message, "problems name the user's files, not the staging copies"
    assert "4 problem(s)" in message
    # nothing changed: no data folder, no pointer, params and history untouched
    assert not (project.root / "data" / "gamma").exists()
    assert not (project.root / "data" / "gamma.dvc").exists()
    assert (project.root / "params.yaml").read_text() == params_before
    assert git(project.root, "rev-parse", "HEAD") == head_before


def test_mvtec_folder_without_ground_truth_is_a_line_labelled_per_image(project: DataStore,
                                                                        tmp_path: Path) -> None:
    source = write_mvtec_folder(tmp_path / "nomasks", 8, 3, 3, n_validation=5)
    shutil.rmtree(source / "ground_truth")
    assert add(project, "alpha", source) == 0
    samples = mvtec_samples(project.pull("alpha").path)
    assert (samples.mask_path == "").all() and samples.attrs["task"] == "classification"
    # the source's test set stays the test set; its validation/ stays validation
    assert sorted(samples[samples.split == "test"].label) == ["good"] * 3 + ["spot"] * 3
    assert (samples[samples.split == "val"].label == "spot").sum() == 5


def test_a_line_without_test_images_is_refused(tmp_path: Path) -> None:
    line = write_mvtec_folder(tmp_path / "line", 6, 0, 0, n_validation=2)
    with pytest.raises(DataValidationError, match="test: no test images"):
        validate_line(line, min_train_images=3, min_validation_images=2)
    write_mvtec_folder(line, 0, 1, 0)
    validate_line(line, min_train_images=3, min_validation_images=2)


def test_unsafe_line_names_are_refused() -> None:
    for name in ("../etc", "a/b", "", ".hidden", "x" * 65, "spa ce"):
        with pytest.raises(ValueError, match="invalid product line name"):
            check_line_name(name)
    assert check_line_name("tiles_v2-a") == "tiles_v2-a"


def test_pull_errors_name_the_line_and_revision(project: DataStore, tmp_path: Path) -> None:
    with pytest.raises(DataVersionError, match="'alpha' has no data at revision"):
        project.pull("alpha")
    add(project, "alpha", write_mvtec_folder(tmp_path / "a", 4, 1, 1, n_validation=1))
    shutil.rmtree(tmp_path / "remote")
    shutil.rmtree(project.root / ".dvc" / "cache")
    with pytest.raises(DataVersionError, match="cannot pull product line 'alpha' at revision"):
        project.pull("alpha")
    with pytest.raises(DataVersionError, match="no-such-rev"):
        project.pull("alpha", "no-such-rev")


@pytest.mark.slow
def test_magnetic_tile_defects_import_cleanly(project: DataStore) -> None:
    if not MTD.is_dir():
        pytest.skip(f"real data set not found at {MTD}")
    assert add(project, "mtd", MTD) == 0
    version = project.pull("mtd")
    counts = {p.name: len(list(p.iterdir())) for p in (version.path / "test").iterdir()}
    assert counts == {"good": 190, "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    fit_roles = [len(list((version.path / role / "good").iterdir())) for role in ("train", "validation")]
    assert sum(fit_roles) == 762 and 0.1 < fit_roles[1] / 762 < 0.15  # train:validation = 0.7:0.1
