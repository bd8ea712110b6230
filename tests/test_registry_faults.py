"""MLflow unreachable in the middle of a retrain: a real ``mlflow server`` stopped just as the
model version is registered, then started again on the same stores."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import mlflow
import pytest

from flows.cli import main
from flows.registry import Registry, model_name
from flows.retrain import run_retrain

from .conftest import write_mvtec_folder
from .projects import init_project
from .serving import free_port, tracking_server

PARAMS = """\
defaults:
  model: {n_features: 16}
  data: {image_size: 64, train_batch_size: 4, eval_batch_size: 8, min_train_images: 5,
         min_validation_images: 2}
  gates:
    floors: {image_auroc: 0.7}
lines:
  alpha: {}
"""


def test_mlflow_down_at_registration_is_retried_leaves_the_champion_and_a_rerun_registers_once(
        tmp_path: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", PARAMS)
    source = write_mvtec_folder(tmp_path / "v1", 8, 4, 4, n_validation=4)
    assert main(["--root", str(root), "data", "add", "alpha", str(source)]) == 0
    port, backend, artifacts = free_port(), f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once; the flow's task retries

    with tracking_server(backend, artifacts, tmp_path / "server1.log", port):
        assert main(["--root", str(root), "retrain", "alpha"]) == 0
    source = write_mvtec_folder(tmp_path / "v2", 8, 4, 4, n_validation=4, seed=7)
    assert main(["--root", str(root), "data", "add", "alpha", str(source)]) == 0

    attempts = []
    register, log_candidate = mlflow.register_model, Registry.log_candidate
    with ExitStack() as server:
        server.enter_context(tracking_server(backend, artifacts, tmp_path / "server2.log", port))

        def register_after_the_server_stopped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            server.close()  # the run is logged; the version is not yet registered
            return register(*args, **kwargs)

        def counted(self: Registry, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            attempts.append(1)
            return log_candidate(self, *args, **kwargs)

        monkeypatch.setattr(mlflow, "register_model", register_after_the_server_stopped)
        monkeypatch.setattr(Registry, "log_candidate", counted)
        [failed] = run_retrain(["alpha"], root=str(root))
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert len(attempts) == 3  # the registration task ran, then was retried twice
    assert f"127.0.0.1:{port}" in failed.error and failed.model_version == ""

    with tracking_server(backend, artifacts, tmp_path / "server3.log", port):
        registry = Registry(root)
        assert str(registry.champion("alpha").version) == "1"  # untouched by the failed retrain
        assert main(["--root", str(root), "retrain", "alpha"]) == 0
        found = registry.client.search_model_versions(f"name = '{model_name('alpha')}'")
        assert sorted(str(v.version) for v in found) == ["1", "2"]
        assert str(registry.champion("alpha").version) == "2"
        experiment = registry.client.get_experiment_by_name("padim/alpha")
        runs = registry.client.search_runs([experiment.experiment_id])
        assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}  # the cut-off run ended
