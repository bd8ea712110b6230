"""dvc.yaml for real: `dvc repro` fits and evaluates a line, `dvc exp run -S` runs an experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from flows.data.store import DataStore

from ..projects import REPOSITORY, init_project
from ..synthetic import write_mvtec_folder

PARAMS = """\
defaults:
  model: {n_features: 8}
  data: {image_size: 64, train_batch_size: 4, eval_batch_size: 8, min_train_images: 5,
         min_validation_images: 2}
  thresholds: {rule: f1}
  export: {dtype: float32}
  gates: {floors: {image_auroc: 0.7}}
lines:
  tiny: {}
  idle: {}  # never reproduced here
"""


def completed(root: Path, *command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def run(root: Path, *command: str) -> str:
    return completed(root, *command).stdout


@pytest.mark.slow
def test_dvc_repro_then_an_experiment(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    for part in ("padim_plugin", "flows"):
        shutil.copytree(REPOSITORY / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPOSITORY / "dvc.yaml", root)
    init_project(root, tmp_path / "remote", PARAMS)
    source = write_mvtec_folder(tmp_path / "src", 8, 3, 3, n_validation=3)
    for line in ("tiny", "idle"):
        assert main(["--root", str(root), "data", "add", line, str(source)]) == 0

    run(root, "dvc", "repro", "evaluate@tiny")
    metrics = json.loads((root / "metrics" / "tiny.json").read_text())
    assert metrics["image_auroc"] == 1.0
    assert {p.name for p in (root / "models" / "tiny").iterdir()} == {"manifest.json", "tensors.safetensors"}
    manifest = json.loads((root / "models" / "tiny" / "manifest.json").read_text())
    assert manifest["metadata"]["data_md5"] == DataStore(root).md5("tiny")  # the data it was fitted on
    assert {p.name for p in (root / "plots" / "tiny").iterdir()} == {"heatmaps.png", "roc.png",
                                                                     "operating_point.png"}
    fitted = (root / "models" / "tiny" / "tensors.safetensors").stat().st_mtime_ns
    run(root, "dvc", "repro", "evaluate@tiny")  # nothing changed: nothing runs
    assert (root / "models" / "tiny" / "tensors.safetensors").stat().st_mtime_ns == fitted
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("floors: {image_auroc: 0.7}", "floors: {image_auroc: 0.9}"))
    assert "up to date" in run(root, "dvc", "status", "evaluate@tiny")  # a gate is not read by the stages
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "baseline")
    for command in (("metrics", "show"), ("metrics", "diff")):  # idle was not reproduced: no warning
        assert completed(root, "dvc", *command).stderr == "", command

    run(root, "dvc", "exp", "run", "evaluate@tiny", "-S", "defaults.model.n_features=4")
    shown = json.loads(run(root, "dvc", "exp", "show", "--json"))
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    assert experiments, "the experiment is listed"
    params = experiments[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["defaults"]["model"]["n_features"] == 4
