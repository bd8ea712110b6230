"""Crash anywhere in a retrain, and a plain rerun heals: SIGKILL at each step of the flow.

Each kill point gets a line of its own in one project (real git + DVC, MLflow on SQLite, Prefect's
test server). The line has a champion (v1) and a new data version; ``padim-mlops retrain LINE``
is killed at the point (tests/kill.py), then the test checks what a team relies on: every alias
points to a version that loads and scores, no run is left marked running after the rerun, and the
rerun completes with exactly one new version, gated once, its predecessor recorded.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from flows.cli import main
from flows.registry.registry import CHALLENGER, CHAMPION, Registry, model_name

from ..kill import KillPoint, assert_killed, run_killed
from ..projects import init_project, tiny_params, versions
from ..synthetic import write_mvtec_folder

# the steps of retrain_product_line, in order, with where the process dies
KILL_POINTS = {
    "during-pull": KillPoint("dvc_objects.fs.local:LocalFileSystem.put_file", call=3),  # 3rd file copied
    "during-fit": KillPoint("padim_plugin.gaussian:StreamingGaussian.update", call=2),
    "while-keeping-statistics": KillPoint("flows.model.incremental:save_statistics"),
    "during-evaluation": KillPoint("flows.model.evaluate:image_metrics"),
    "during-logging": KillPoint("mlflow.pyfunc:log_model"),
    "after-registration": KillPoint("mlflow.tracking.client:MlflowClient.create_model_version", after=True),
    "before-champion-alias-move": KillPoint("mlflow.tracking.client:MlflowClient.set_registered_model_alias",
                                            call=2),
    "after-champion-alias-move": KillPoint("mlflow.tracking.client:MlflowClient.set_registered_model_alias",
                                           call=2, after=True),
}
PARAMS = tiny_params(*KILL_POINTS)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """Every line with its first data version retrained to champion v1."""
    base = tmp_path_factory.mktemp("faults")
    root = base / "project"
    init_project(root, base / "remote", PARAMS)
    for line in KILL_POINTS:
        source = write_mvtec_folder(base / f"{line}_v1", 8, 4, 4, n_validation=4)
        assert main(["--root", str(root), "data", "add", line, str(source)]) == 0
    assert main(["--root", str(root), "retrain"]) == 0
    return root


def serves(registry: Registry, line: str, alias: str) -> bool:
    """The alias's model loads and scores an image (pixels in, a finite score out)."""
    model = mlflow.pyfunc.load_model(f"models:/{model_name(line)}@{alias}")
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    return bool(np.isfinite(model.predict(image)["pred_score"]).all())


@pytest.mark.parametrize("line", list(KILL_POINTS))
def test_a_retrain_killed_at_any_step_leaves_a_serving_champion_and_a_rerun_registers_once(
        project: Path, line: str, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    source = write_mvtec_folder(tmp_path / "v2", 8, 4, 4, n_validation=4, seed=7)
    assert main(["--root", str(project), "data", "add", line, str(source)]) == 0
    registry = Registry(project)
    killed = run_killed(KILL_POINTS[line], ["--root", str(project), "retrain", line],
                        env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert_killed(killed)

    champion = registry.champion(line)
    expected = "2" if line == "after-champion-alias-move" else "1"  # the move is the commit point
    assert str(champion.version) == expected
    for alias in (CHAMPION, CHALLENGER):
        if registry.alias(line, alias) is not None:
            assert serves(registry, line, alias), alias

    assert main(["--root", str(project), "retrain", line]) == 0
    assert versions(registry, line) == ["1", "2"]
    new = registry.version(line, "2")
    assert new.tags["padim.decision"] == CHAMPION and new.tags["padim.previous_champion"] == "1"
    assert str(registry.champion(line).version) == "2" and serves(registry, line, CHAMPION)
    assert str(registry.challenger(line).version) == "2"  # set even if the kill came before it
    experiment = registry.client.get_experiment_by_name(f"padim/{line}")
    statuses = {run.info.status for run in registry.client.search_runs([experiment.experiment_id])}
    assert "RUNNING" not in statuses  # a run left by the killed process is marked killed
