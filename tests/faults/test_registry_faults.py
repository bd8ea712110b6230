"""The registry when things go wrong: MLflow unreachable (a real ``mlflow server`` stopped just as
a model version is registered, then started again on the same stores), and state one project's
Registry could leak to the next in the same process."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flows.cli import main
from flows.registry.registry import Registry
from flows.retrain import run_retrain

from ..projects import init_project, tiny_params, versions
from ..serving import free_port, tracking_server
from ..synthetic import write_mvtec_folder

PARAMS = tiny_params("alpha")


def test_a_registry_leaves_the_tracking_uri_setting_as_it_found_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Registry(tmp_path / "a")  # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert Registry(tmp_path / "b").uri == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"


def test_an_unreachable_registry_is_an_error_never_no_champion(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = Registry(tmp_path, uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(MlflowException, match="127.0.0.1"):
        registry.champion("alpha")  # read as None, a worse candidate could be promoted over it


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
    register, log_candidate = MlflowClient.create_model_version, Registry.log_candidate
    with ExitStack() as server:
        server.enter_context(tracking_server(backend, artifacts, tmp_path / "server2.log", port))

        def register_after_the_server_stopped(*args, **kwargs):
            server.close()  # the run is logged; the version is not yet registered
            return register(*args, **kwargs)

        def counted(self: Registry, *args, **kwargs):
            attempts.append(1)
            return log_candidate(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, "create_model_version", register_after_the_server_stopped)
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
        assert versions(registry, "alpha") == ["1", "2"]
        assert str(registry.champion("alpha").version) == "2"
        experiment = registry.client.get_experiment_by_name("padim/alpha")
        runs = registry.client.search_runs([experiment.experiment_id])
        fits = [run for run in runs if "padim.rescore" not in run.data.tags]  # not v1 re-scored on v2's data
        assert len(fits) == 3 and {run.info.status for run in runs} == {"FINISHED"}  # the cut-off run ended
