"""End to end: real git + DVC with a local remote, real MLflow on SQLite, Prefect's test harness."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from flows.cli import main
from flows.config import GateParams
from flows.data.store import DataStore
from flows.events import MODEL_PROMOTED, RETRAIN_FAILED
from flows.registry.gates import decide
from flows.registry.registry import Registry, model_name
from padim_plugin.artifact import file_sha256
from padim_plugin.runtime import ExportedModel, score_and_log
from padim_plugin.score_log import ScoreLog, ScoreLogWriter

from ..prefect_events import events_about
from ..projects import add_folders, git, init_project, versions
from ..serving import mlflow_server
from ..synthetic import write_flat_folders, write_mvtec_folder

PARAMS = """\
defaults:
  model: {n_features: 16}
  data: {image_size: 64, train_batch_size: 4, eval_batch_size: 8, min_train_images: 5,
         min_validation_images: 2}
  thresholds: {rule: f1}   # a few validation images cannot support a false-alarm budget
  gates:
    floors: {image_auroc: 0.7}
    pixel_floors: {pixel_auroc: 0.7}
    max_drop: 0.01
lines:
  alpha: {}
  beta: {}
  pickled: {}
"""
STRICTER = """\
  broken:
    data: {min_train_images: 50}   # raised after its data was added: validation must stop the fit
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    base = tmp_path_factory.mktemp("flows")
    root = base / "project"
    init_project(root, base / "remote", PARAMS)
    for seed, line in enumerate(("alpha", "beta", "broken", "pickled")):
        source = write_mvtec_folder(base / f"{line}_v1", 8, 4, 4, seed=seed, n_validation=4)
        assert main(["--root", str(root), "data", "add", line, str(source)]) == 0
    (root / "params.yaml").write_text(PARAMS + STRICTER)
    git(root, "commit", "-qam", "stricter data rule for broken")
    return root


def retrain(root: Path, *lines: str, extra: tuple[str, ...] = ()) -> int:
    return main(["--root", str(root), "retrain", *lines, *extra])


FIRST_RUN = "first-run"  # a git tag: the commit the first retrain ran on (later tests add data)


@pytest.fixture(scope="module")
def first_run(project: Path) -> Path:
    assert retrain(project) == 1  # 'broken' fails, the others finish
    git(project, "tag", FIRST_RUN)
    return project


@pytest.fixture(scope="module")
def worse_alpha(first_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha's second data version: the same test images, but a training set contaminated with
    defects the model then learns; retrained."""
    worse = tmp_path_factory.mktemp("worse") / "alpha_v2"
    shutil.copytree(first_run / "data" / "alpha", worse)
    spots = sorted((worse / "test" / "spot").iterdir())
    for index, image in enumerate(sorted((worse / "train" / "good").iterdir())):
        pixels = np.asarray(Image.open(spots[index % len(spots)])).copy()
        pixels[0, 0] = index  # each a distinct file: identical ones would be imported once
        Image.fromarray(pixels).save(image)
    assert main(["--root", str(first_run), "data", "add", "alpha", str(worse)]) == 0
    assert retrain(first_run, "alpha") == 0
    return first_run


def test_retrain_registers_champions_and_reports_the_failing_line(first_run: Path) -> None:
    registry = Registry(first_run)
    for line in ("alpha", "beta"):
        champion = registry.champion(line)
        assert champion is not None and str(champion.version) == "1"
        assert champion.tags["padim.decision"] == "champion"
        assert champion.tags["padim.data_md5"] == DataStore(first_run).md5(line, FIRST_RUN)
        run = registry.client.get_run(champion.run_id)
        assert run.data.metrics["image_auroc"] == 1.0  # bright squares on a steady texture
        assert run.data.params["model.n_features"] == "16"
        artifacts = {a.path for a in registry.client.list_artifacts(champion.run_id, "figures")}
        assert artifacts == {"figures/heatmaps.png", "figures/roc.png", "figures/operating_point.png"}
    assert registry.champion("broken") is None
    assert versions(registry, "broken") == []


def test_a_new_champion_is_announced_with_its_version_reason_and_run(first_run: Path) -> None:
    champion = Registry(first_run).version("beta", "1")
    events = events_about("beta", MODEL_PROMOTED, lambda payload: champion.run_id in payload["link"],
                          at_least=1)
    assert [(event["payload"]["version"], event["payload"]["action"]) for event in events] == [("1", "gate")]
    assert events[0]["payload"]["reason"].startswith("passes every gate")


def test_a_failed_retrain_is_announced_with_the_line_and_its_error(first_run: Path) -> None:
    events = events_about("broken", RETRAIN_FAILED, lambda payload: str(first_run) in payload["reason"],
                          at_least=1)
    assert "7 normal training images, at least 50 needed" in events[0]["payload"]["reason"]


def test_champion_loads_and_scores_in_a_fresh_process_without_flows_prefect_or_dvc(first_run: Path,
                                                                                    tmp_path: Path) -> None:
    images = tmp_path / "images.npy"
    test = first_run / "data" / "alpha" / "test"
    files = sorted((test / "good").iterdir()) + sorted((test / "spot").iterdir())
    np.save(images, np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    script = (
        "import json, pathlib, sys\n"
        "class Refuse:\n"  # scoring must need padim_plugin and MLflow only
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('flows', 'prefect', 'dvc'):\n"
        "            raise ImportError(f'scoring imported {name}')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import mlflow, numpy as np\n"
        "uri = 'models:/padim-alpha@champion'\n"
        "model = mlflow.pyfunc.load_model(uri)\n"
        "out = model.predict(np.load(sys.argv[1]), params={'anomaly_map': 'values'})\n"
        "files = [p.name for p in pathlib.Path(mlflow.artifacts.download_artifacts(uri)).rglob('*')]\n"
        "print(json.dumps({k: np.asarray(v).tolist() for k, v in out.items() if k != 'anomaly_map'}"
        " | {'map_shape': list(out['anomaly_map'].shape), 'files': files}))\n"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{first_run / 'mlflow.db'}")
    result = subprocess.run([sys.executable, "-c", script, str(images)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    scores, labels = np.array(output["pred_score"]), output["pred_label"]
    assert labels[:4] == [0, 0, 0, 0] and (scores[:4] < 0.5).all()  # normalised: threshold at 0.5
    assert sum(labels[4:]) >= 3  # at the threshold chosen on validation
    assert scores[4:].min() > scores[:4].max()
    assert output["map_shape"] == [8, 64, 64]
    assert {"pyfunc.py", "manifest.json", "tensors.safetensors"} <= set(output["files"])
    assert not [name for name in output["files"] if name.endswith((".pkl", ".pt", ".pth"))], output["files"]


def fit_states() -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="fit and evaluate"))
        )
    return [run.state.name for run in runs]


def test_unchanged_rerun_reuses_the_registered_versions_without_fitting(first_run: Path) -> None:
    registry = Registry(first_run)
    before = {line: versions(registry, line) for line in ("alpha", "beta")}
    fits_before = len(fit_states())
    assert retrain(first_run, "alpha", "beta") == 0
    assert len(fit_states()) == fits_before  # found in the registry by cache key: no fit task ran
    assert {line: versions(registry, line) for line in ("alpha", "beta")} == before
    assert str(registry.champion("alpha").version) == "1"


def test_a_rerun_of_an_unchanged_line_skips_it_before_pulling_its_data(
        first_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshots = first_run / ".padim" / "data" / "beta"
    shutil.rmtree(snapshots)
    assert retrain(first_run, "beta") == 0
    assert not snapshots.exists()  # nothing was pulled
    assert "unchanged data, params and code: reused (nothing pulled)" in caplog.text


def test_worse_data_version_stays_challenger_with_its_reason(worse_alpha: Path) -> None:
    registry = Registry(worse_alpha)
    assert str(registry.champion("alpha").version) == "1"
    gated = [event for event in registry.history("alpha") if event.action == "gate" and event.version == "2"]
    assert [event.outcome for event in gated] == ["challenger"]  # the record, whatever happened since
    assert "worse than champion v1's" in gated[0].reason


def test_promote_and_rollback_by_hand(worse_alpha: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first_run = worse_alpha
    registry = Registry(first_run)
    gate_reason = registry.version("alpha", "2").tags["padim.gate.reason"]
    promote = ["--root", str(first_run), "promote", "alpha", "2", "--reason", "accepted by QA"]
    assert main([*promote, "--override-gates"]) == 0
    assert str(registry.champion("alpha").version) == "2"
    tags = registry.version("alpha", "2").tags
    assert tags["padim.reason"] == "accepted by QA" and tags["padim.gate.reason"] == gate_reason
    assert main(["--root", str(first_run), "rollback", "alpha", "--reason", "QA changed its mind"]) == 0
    assert str(registry.champion("alpha").version) == "1"
    assert [event.action for event in registry.history("alpha")][-2:] == ["promote", "rollback"]
    assert main(["--root", str(first_run), "promote", "alpha", "99", "--reason", "r"]) == 1
    assert "has no version 99" in capsys.readouterr().err
    assert str(registry.champion("alpha").version) == "1"  # a refused promotion changes nothing


def read_table(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_predict_writes_scores_and_heatmaps(first_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "predictions"
    images = first_run / "data" / "beta" / "test" / "spot"
    assert main(["--root", str(first_run), "predict", "beta", str(images), "--out", str(out)]) == 0
    rows = read_table(out / "scores.csv")
    champion = Registry(first_run).champion("beta")
    assert len(rows) == 4 and sum(row["label"] == "1" for row in rows) >= 3
    assert {row["model_version"] for row in rows} == {str(champion.version)}
    assert {row["data_md5"] for row in rows} == {champion.tags["padim.data_md5"]}
    assert sorted(p.name for p in out.glob("*_heatmap.png")) == sorted(row["heatmap"] for row in rows)
    assert main(["--root", str(first_run), "predict", "nosuchline", str(images), "--out", str(out)]) == 1


def test_predict_logs_each_scored_image_to_the_lines_production_log(first_run: Path, tmp_path: Path) -> None:
    images = first_run / "data" / "beta" / "test" / "spot"
    started = datetime.now(UTC)
    assert main(["--root", str(first_run), "predict", "beta", str(images), "--out", str(tmp_path / "o")]) == 0
    table = {row["image"]: row for row in read_table(tmp_path / "o" / "scores.csv")}
    logged = ScoreLog(first_run / ".padim" / "production").read("beta", since=started).to_pylist()
    assert sorted(row["source"] for row in logged) == sorted(table)
    for row in logged:
        written = table[row["source"]]
        assert row["score"] == pytest.approx(float(written["score"]), abs=1e-6)
        assert (row["label"], row["model_version"], row["data_rev"]) == (
            int(written["label"]), written["model_version"], written["data_md5"])
        assert row["threshold"] == pytest.approx(float(written["raw_threshold"]), rel=1e-6)
        pixels = np.asarray(Image.open(row["source"]).convert("RGB"))
        expected = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
        assert row["image_digest"] == expected
        assert row["image"] is None  # params.yaml's production.keep_images is false by default


def test_batch_scoring_reports_bad_files_as_rows_and_matches_one_by_one(
        first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drop = tmp_path / "drop"
    shutil.copytree(first_run / "data" / "beta" / "test", drop)
    small = sorted((drop / "good").iterdir())[0]
    Image.open(small).resize((48, 40)).save(small)  # another camera's size in the same batch
    (drop / "good" / "truncated.png").write_bytes(sorted((drop / "spot").iterdir())[0].read_bytes()[:200])
    (drop / "good" / "notes.png").write_text("not an image")
    tables = {}
    for size in ("1", "5"):
        out = tmp_path / f"out{size}"
        args = ["predict", "beta", str(drop), "--out", str(out), "--batch-size", size]
        code = main(["--root", str(first_run), *args])
        assert code == 1 and "2 file(s) could not be scored" in capsys.readouterr().err
        tables[size] = {row["image"]: row for row in read_table(out / "scores.csv")}
    rows = tables["5"]
    assert len(rows) == 10 and {Path(p).name for p, r in rows.items() if r["error"]} == {"truncated.png",
                                                                                         "notes.png"}
    assert "does not decode" in rows[str(drop / "good" / "truncated.png")]["error"]
    for path, row in rows.items():
        if not row["error"]:
            assert float(row["score"]) == pytest.approx(float(tables["1"][path]["score"]), abs=1e-5), path


def test_score_images_flow_writes_the_same_table(first_run: Path, tmp_path: Path) -> None:
    from flows.batch import score_images

    images = first_run / "data" / "beta" / "test"
    report = score_images("beta", str(images), str(tmp_path / "flow"), root=str(first_run))
    assert report.scored == 8 and not report.failed
    args = ["predict", "beta", str(images), "--out", str(tmp_path / "cli")]
    assert main(["--root", str(first_run), *args]) == 0
    assert read_table(report.table) == read_table(tmp_path / "cli" / "scores.csv")


@pytest.fixture(scope="module")
def openvino_exports(first_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha's champion exported to OpenVINO by the command line; the folder it wrote into."""
    out = tmp_path_factory.mktemp("exports")
    assert main(["--root", str(first_run), "export", "alpha", "--format", "openvino", "--out", str(out)]) == 0
    return out


def test_export_writes_a_checked_openvino_model_of_the_champion_that_scores_as_the_pyfunc(
        first_run: Path, openvino_exports: Path) -> None:
    out = openvino_exports
    champion = Registry(first_run).champion("alpha")
    folder = out / f"padim-alpha-v{champion.version}-openvino"
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["version"] == str(champion.version)
    assert manifest["data_md5"] == champion.tags["padim.data_md5"]
    assert manifest["files"] == {name: file_sha256(folder / name) for name in ("model.bin", "model.xml")}
    assert [p.name for p in out.iterdir()] == [folder.name]  # no half-written export left behind

    test = first_run / "data" / "alpha" / "test"
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(test.rglob("*.png"))])
    expected = mlflow.pyfunc.load_model("models:/padim-alpha@champion").predict(pixels)
    outputs = ExportedModel(folder / "model.xml")(pixels.transpose(0, 3, 1, 2) / 255)
    np.testing.assert_allclose(outputs["pred_score"].ravel(), expected["pred_score"], atol=1e-3)
    np.testing.assert_array_equal(outputs["pred_label"].ravel(), expected["pred_label"])
    args = ["export", "nosuchline", "--format", "onnx", "--out", str(out)]
    assert main(["--root", str(first_run), *args]) == 1


def test_an_exported_model_logs_its_scores_with_the_version_data_and_threshold_of_its_manifest(
        first_run: Path, openvino_exports: Path, tmp_path: Path) -> None:
    champion = Registry(first_run).champion("alpha")
    model = ExportedModel(openvino_exports / f"padim-alpha-v{champion.version}-openvino" / "model.xml")
    files = sorted((first_run / "data" / "alpha" / "test").rglob("*.png"))[:3]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    with ScoreLogWriter(ScoreLog(tmp_path / "log"), "alpha") as writer:
        outputs = score_and_log(model, pixels, writer, [f.name for f in files])
    logged = ScoreLog(tmp_path / "log").read("alpha").to_pylist()
    assert [row["source"] for row in logged] == [f.name for f in files]
    assert [row["score"] for row in logged] == pytest.approx(outputs["pred_score"].ravel().tolist())
    assert {(row["model_version"], row["data_rev"]) for row in logged} == {
        (str(champion.version), champion.tags["padim.data_md5"])}
    threshold = model.manifest()["raw_thresholds"]["image"]
    assert [row["threshold"] for row in logged] == pytest.approx([threshold] * 3, rel=1e-6)


def test_an_export_that_disagrees_with_its_model_is_not_written_and_the_earlier_one_stays(
        first_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import flows.export

    out = tmp_path / "exports"
    earlier = out / "padim-beta-v1-onnx"
    earlier.mkdir(parents=True)
    (earlier / "export.json").write_text("{}")
    monkeypatch.setattr(flows.export, "raw_errors", lambda *args: {"pred_score": 0.2, "anomaly_map": 0.0})
    assert main(["--root", str(first_run), "export", "beta", "--format", "onnx", "--out", str(out)]) == 1
    assert "differs from the model by 2.00e-01 relative" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [earlier.name]
    assert [p.name for p in earlier.iterdir()] == ["export.json"]


def test_replace_folder_swaps_a_whole_export_in(tmp_path: Path) -> None:
    from flows.data.folders import swapped_in

    target, new = tmp_path / "export", tmp_path / "scratch" / "new"
    for folder, content in ((target, "old"), (new, "new")):
        folder.mkdir(parents=True)
        (folder / "model.xml").write_text(content)
    with swapped_in(new, target):
        pass
    assert (target / "model.xml").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "scratch"]  # no backup left


def test_dask_task_runner_on_a_local_cluster(first_run: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert retrain(first_run, "beta", extra=("--dask-address", cluster.scheduler_address)) == 0
    assert str(Registry(first_run).champion("beta").version) == "1"


def test_gates_floors_ceilings_and_drops_against_the_champion() -> None:
    gates = GateParams(floors={"image_auroc": 0.8}, ceilings={"test_normal_fpr": 0.05}, max_drop=0.02)
    good = {"image_auroc": 0.9, "test_normal_fpr": 0.01}
    assert decide(good, None, gates).promote
    assert not decide(good | {"image_auroc": 0.7}, None, gates).promote
    above = decide(good | {"test_normal_fpr": 0.2}, None, gates)
    assert not above.promote and "test_normal_fpr 0.2000 above ceiling 0.05" in above.reason
    assert decide(good | {"image_auroc": 0.89}, good, gates, "3").promote
    refused = decide(good | {"image_auroc": 0.85}, good, gates, "3")
    assert not refused.promote and "worse than champion v3's 0.9000" in refused.reason
    more_alarms = decide(good | {"test_normal_fpr": 0.04}, good, gates, "3")  # lower is better here
    assert not more_alarms.promote and "test_normal_fpr" in more_alarms.reason


def test_a_gate_on_a_missing_metric_fails_with_the_reason_not_a_nan_comparison() -> None:
    gates = GateParams(floors={"image_auroc": 0.7, "pixel_auroc": 0.7})
    decision = decide({"image_auroc": 0.9}, None, gates, unavailable={"pixel_auroc": "no masks here"})
    assert not decision.promote
    assert decision.reason == "pixel_auroc is missing (no masks here), so its floor 0.7 cannot be met"
    assert "nan" not in decide({}, None, gates).reason.lower()


def test_unknown_gate_metrics_are_refused_by_name(tmp_path: Path) -> None:
    from flows.config import load_params

    (tmp_path / "params.yaml").write_text("defaults: {}\nlines:\n  a: {gates: {ceilings: {fpr: 0.1}}}\n")
    with pytest.raises(ValueError, match=r"(?s)product line 'a'.*unknown metrics \['fpr'\]"):
        load_params(tmp_path / "params.yaml")


def test_line_without_masks_gets_image_metrics_at_the_validation_threshold(first_run: Path,
                                                                           tmp_path: Path) -> None:
    normal, defects, _ = write_flat_folders(tmp_path / "nomask", 40, 16, masks=False, seed=7)
    assert add_folders(first_run, "nomask", normal, defects, None) == 0
    assert retrain(first_run, "nomask") == 0
    registry = Registry(first_run)
    version = registry.challenger("nomask")
    assert version.tags["padim.decision"] == "champion"  # gated on image metrics and its operating point
    assert version.tags["padim.reason"].endswith(
        "labelled per image (no test defect image has a mask: the line is labelled per image): gated on"
        " image metrics and the operating point, pixel floors not applied (pixel_auroc >= 0.7)")
    run = registry.client.get_run(version.run_id)
    metrics, params = run.data.metrics, run.data.params
    assert "pixel_auroc" not in metrics and "pixel_aupro" not in metrics  # absent, not NaN
    assert metrics["pixel_eval_defect_images"] == 0
    assert {"image_f1", "image_precision", "image_recall", "test_normal_fpr"} <= metrics.keys()
    assert params["calibration.image_rule"].startswith("F1-optimal on validation")
    # the logged counts are the roles on disk, and the F1 is the one at the logged threshold
    data = DataStore(first_run).pull("nomask").path
    assert metrics["validation_defect_images"] == len(list((data / "validation" / "defect").iterdir()))
    assert metrics["test_defect_images"] == len(list((data / "test" / "defect").iterdir()))
    assert metrics["train_images"] == len(list((data / "train" / "good").iterdir()))


def test_normal_only_line_is_refused_by_name_then_promoted_by_its_own_gate(first_run: Path,
                                                                           tmp_path: Path) -> None:
    normal, _, _ = write_flat_folders(tmp_path / "plain", 50, 0, seed=8)
    assert add_folders(first_run, "plain", normal, None, None) == 0
    assert retrain(first_run, "plain") == 0
    registry = Registry(first_run)
    first = registry.challenger("plain")
    assert "image_auroc is missing (the test split has no defect images: a normal-only line)" in (
        first.tags["padim.reason"])
    metrics = registry.client.get_run(first.run_id).data.metrics
    assert 0 <= metrics["test_normal_fpr"] <= 1 and "image_f1" not in metrics
    params = registry.client.get_run(first.run_id).data.params
    assert params["calibration.image_rule"].startswith("quantile 0.995 of")
    # the team's policy for this line: false alarms on normal parts, nothing else
    params_file = first_run / "params.yaml"
    params_file.write_text(params_file.read_text().replace(
        "  plain: {}",
        "  plain:\n    gates: {ceilings: {test_normal_fpr: 0.5}, false_alarm_allowance: null}"))
    git(first_run, "commit", "-qam", "normal-only policy for plain")
    assert retrain(first_run, "plain") == 0
    champion = registry.champion("plain")
    assert champion is not None and str(champion.version) == "2"
    assert champion.tags["padim.reason"].startswith("passes every gate")


class PickledPyfunc(mlflow.pyfunc.PythonModel):
    """How models were registered before the data-only format: a cloudpickled Python object."""

    _skip_type_hint_validation = True  # as flows.registry.pyfunc.PadimPyfunc: no hints, no warning

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_pickled_champion_is_never_loaded_to_compare_or_score(first_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(first_run)
    with mlflow.start_run(experiment_id=registry._experiment("pickled")):
        info = mlflow.pyfunc.log_model(name="model", python_model=PickledPyfunc())
    old = mlflow.register_model(info.model_uri, model_name("pickled"))
    registry.client.set_registered_model_alias(model_name("pickled"), "champion", old.version)
    extra, _, _ = write_flat_folders(tmp_path / "more", 6, 0, seed=9)
    for image in extra.iterdir():
        image.rename(image.with_name(f"week2-{image.name}"))
    assert main(["--root", str(first_run), "data", "add", "pickled", "--append", "--normal", str(extra)]) == 0
    assert retrain(first_run, "pickled") == 0
    assert str(registry.champion("pickled").version) == str(old.version)
    assert registry.challenger("pickled").tags["padim.reason"] == (
        f"padim-pickled v{old.version} is a pickled model (registered before the data-only format); it is not"
        " loaded, since loading it would run its code, so it cannot be re-scored on this data; compare and"
        " promote by hand")
    images = first_run / "data" / "pickled" / "test"
    predict = ["predict", "pickled", str(images), "--out", str(tmp_path / "o")]
    assert main(["--root", str(first_run), *predict]) == 1
    assert "is a pickled model" in capsys.readouterr().err


def post(url: str, body: dict) -> dict:
    return json.loads(post_raw(url, body))["predictions"]


def post_raw(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.read()


@pytest.mark.slow
def test_a_server_given_a_score_log_logs_each_image_with_its_callers_source(first_run: Path,
                                                                            tmp_path: Path) -> None:
    files = sorted((first_run / "data" / "alpha" / "test").rglob("*.png"))[:3]
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
    uri = "models:/padim-alpha@champion"
    champion = Registry(first_run).champion("alpha")
    environment = {"PADIM_SCORE_LOG": str(tmp_path / "log"), "PADIM_MODEL_VERSION": str(champion.version)}
    store = f"sqlite:///{first_run / 'mlflow.db'}"
    with mlflow_server(uri, store, tmp_path / "server.log", **environment) as url:
        tagged = post(f"{url}/invocations", {"inputs": {"image": encoded[:2]},
                                             "params": {"source": "camera-7"}})
        untagged = post(f"{url}/invocations", {"inputs": {"image": encoded[2:]}})
    # the rows waited in the server (fewer than 64, within 10 s) and were written as it stopped
    logged = ScoreLog(tmp_path / "log").read("alpha").to_pylist()
    by_source = {source: sorted(row["score"] for row in logged if row["source"] == source)
                 for source in ("camera-7", "rest")}
    assert by_source["camera-7"] == pytest.approx(sorted(tagged["pred_score"]), abs=1e-6)
    assert by_source["rest"] == pytest.approx(untagged["pred_score"], abs=1e-6)
    assert len(logged) == 3
    assert {(row["model_version"], row["data_rev"]) for row in logged} == {
        (str(champion.version), champion.tags["padim.data_md5"])}


@pytest.mark.slow
def test_mlflow_models_serve_answers_pixels_and_encoded_images_as_in_process(first_run: Path,
                                                                             tmp_path: Path) -> None:
    files = sorted((first_run / "data" / "alpha" / "test" / "spot").iterdir())[:2]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
    uri = "models:/padim-alpha@champion"
    model = mlflow.pyfunc.load_model(uri)
    expected = model.predict(pixels, params={"anomaly_map": "values"})
    expected_png = model.predict(pixels, params={"anomaly_map": "png", "map_size": 16})
    buffer = io.BytesIO()
    Image.open(files[0]).convert("RGB").resize((256, 256)).save(buffer, format="PNG")
    large = base64.b64encode(buffer.getvalue()).decode()
    with mlflow_server(uri, f"sqlite:///{first_run / 'mlflow.db'}", tmp_path / "server.log") as url:
        answers = [post(f"{url}/invocations", {"inputs": pixels.tolist()}),
                   post(f"{url}/invocations", {"inputs": {"image": encoded}}),
                   post(f"{url}/invocations", {"dataframe_split": {"columns": ["image"],
                                                                   "data": [[e] for e in encoded]}})]
        compact = post_raw(f"{url}/invocations", {"inputs": {"image": [large]}})
        maps = post(f"{url}/invocations", {"inputs": {"image": encoded}, "params": {"anomaly_map": "values"}})
        pngs = post(f"{url}/invocations", {"inputs": {"image": encoded},
                                           "params": {"anomaly_map": "png", "map_size": 16}})
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(f"{url}/invocations", {"inputs": {"image": [encoded[0], "not base64!"]}})
        assert refused.value.code == 400 and "image 1: not base64 text" in refused.value.read().decode()
    for answer in answers:
        assert set(answer) == {"pred_score", "pred_label"}
        assert np.allclose(answer["pred_score"], expected["pred_score"], atol=1e-6)
        assert answer["pred_label"] == expected["pred_label"].tolist()
    assert len(compact) < 1024 and set(json.loads(compact)["predictions"]) == {"pred_score", "pred_label"}
    assert np.allclose(maps["anomaly_map"], expected["anomaly_map"], atol=1e-6)
    assert pngs["anomaly_map_png"] == expected_png["anomaly_map_png"].tolist()
