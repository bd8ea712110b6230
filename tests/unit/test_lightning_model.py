"""StreamingPadim through anomalib's Engine and CLI: fit, test, predict, export, several devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.data import ImageBatch
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from padim_plugin import NotFittedError, StreamingPadim
from padim_plugin.datamodule import MVTecLayout
from padim_plugin.gaussian import StreamingGaussian

from ..ddp_fit import fit_all
from ..fits import OPTIONS
from ..projects import REPOSITORY
from ..serving import free_port


def small_model(**kwargs: object) -> StreamingPadim:
    return StreamingPadim(
        n_features=16, pre_processor=StreamingPadim.configure_pre_processor((64, 64)), **kwargs
    )


def engine_for(root: Path, **kwargs: object) -> Engine:
    return Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                  enable_progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_line: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamingPadim, Engine]:
    engine = engine_for(tmp_path_factory.mktemp("engine"))
    model = small_model()
    engine.fit(model=model, datamodule=MVTecLayout(tiny_line, train_batch_size=3, eval_batch_size=4))
    return model, engine


def test_engine_fit_then_test_scores_the_defects(trained: tuple[StreamingPadim, Engine],
                                                 tiny_line: Path) -> None:
    model, engine = trained
    assert model.model.gaussian.n_samples == 7
    results = engine.test(model=model, datamodule=MVTecLayout(tiny_line, eval_batch_size=4))
    assert results[0]["image_AUROC"] == 1.0  # bright squares on a steady texture
    assert results[0]["pixel_AUROC"] > 0.9


def test_engine_predict_returns_maps_of_image_size(trained: tuple[StreamingPadim, Engine],
                                                   tiny_line: Path) -> None:
    model, engine = trained
    predictions = engine.predict(model=model, data_path=tiny_line / "test" / "spot")
    assert len(predictions) >= 1
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (64, 64)
    assert batch.pred_label is not None and bool(batch.pred_label.all())


def test_engine_export_to_torch_gives_the_model(trained: tuple[StreamingPadim, Engine],
                                                tmp_path: Path) -> None:
    """anomalib's Engine route; its ONNX and OpenVINO exports are checked in test_export.py."""
    model, engine = trained
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    torch_path = engine.export(model=model, export_type=ExportType.TORCH, export_root=tmp_path)
    exported = torch.load(torch_path, weights_only=False)["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(images).pred_score, expected.pred_score)


def test_predict_and_export_before_fit_are_errors(tmp_path: Path, tiny_line: Path) -> None:
    engine = engine_for(tmp_path)
    with pytest.raises(NotFittedError, match="not fitted"):
        engine.predict(model=small_model(), data_path=tiny_line / "test" / "spot")
    with pytest.raises(NotFittedError, match="before it is fitted"):
        engine.export(model=small_model(), export_type=ExportType.TORCH, export_root=tmp_path)


def test_training_step_names_the_files_of_a_non_finite_batch() -> None:
    model = small_model(evaluator=False, visualizer=False)
    image = torch.rand(2, 3, 64, 64)
    image[1, 0, 3, 3] = float("inf")
    batch = ImageBatch(image=image, image_path=["a/ok.png", "a/broken.png"])
    with pytest.raises(ValueError, match=r"training batch 5 \(a/ok.png, a/broken.png\)"):
        model.training_step(batch, 5)


def test_empty_training_set_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "line" / "train" / "good").mkdir(parents=True)
    (tmp_path / "line" / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images under"):
        engine_for(tmp_path).fit(model=small_model(), datamodule=MVTecLayout(tmp_path / "line"))


def test_plain_ddp_is_refused_with_a_pointer_to_ddp_streaming(
    tmp_path: Path, tiny_line: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(variable, raising=False)  # Lightning sets these; undo them afterwards
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    engine = Engine(accelerator="cpu", devices=1, strategy="ddp", logger=False, default_root_dir=tmp_path,
                    enable_progress_bar=False)
    try:
        with pytest.raises(ValueError, match="ddp_streaming"):
            engine.fit(model=small_model(), datamodule=MVTecLayout(tiny_line))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


OPTION_SETS = {"paper": {}, "aligned projection": OPTIONS}


@pytest.fixture(scope="module")
def fitted_states(tiny_line: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, dict]]:
    """Each option set fitted in this process and on two gloo processes that torchrun starts
    (both sets in one launch): states by number of processes, then by option set."""
    folders = {devices: tmp_path_factory.mktemp(f"ddp{devices}") for devices in (1, 2)}
    fit_all(tiny_line, folders[1], OPTION_SETS, devices=1)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()),
                    str(REPOSITORY / "tests" / "ddp_fit.py"), str(tiny_line), str(folders[2]),
                    json.dumps(OPTION_SETS)], check=True, cwd=folders[2], timeout=600, env=env)
    return {devices: {name: torch.load(folder / f"{name}.pt") for name in OPTION_SETS}
            for devices, folder in folders.items()}


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTION_SETS)
def test_two_gloo_processes_give_the_same_model_as_one(fitted_states: dict[int, dict[str, dict]],
                                                       options: str) -> None:
    """7 images over 2 ranks: the sampler pads rank 1 with a repeat, which must not count."""
    states = {}
    for devices in (1, 2):
        saved = fitted_states[devices][options]
        gaussian = StreamingGaussian()
        gaussian.load_state_dict({k.removeprefix("gaussian."): v for k, v in saved.items()
                                  if k.startswith("gaussian.")})
        states[devices] = gaussian, saved
    assert states[1][0].n_samples == states[2][0].n_samples == 7
    for statistic in ("mean", "covariance"):
        one, two = getattr(states[1][0], statistic)(), getattr(states[2][0], statistic)()
        # float32 features summed in another order: equal to 1e-5 of the statistic's scale
        assert float((two - one).abs().max()) <= 1e-5 * float(one.abs().max()), statistic
    for finalized in ("mean", "whitening"):  # after pooling, when there is any
        one, two = states[1][1][finalized], states[2][1][finalized]
        # 7 images in 16 channels: the factor of Sigma + 0.01 I is ill-conditioned and magnifies the
        # covariances' float32 rounding about a hundredfold
        assert float((two - one).abs().max()) <= 1e-3 * float(one.abs().max()), finalized


@pytest.mark.slow
def test_anomalib_cli_fits_the_plugin(tiny_line: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """anomalib's own command line (``anomalib fit ...``), in this process: the plugin by class path."""
    monkeypatch.chdir(tmp_path)
    AnomalibCLI(["fit", "--model", "padim_plugin.StreamingPadim", "--model.n_features", "16",
                 "--data", "padim_plugin.datamodule.MVTecLayout", "--data.root", str(tiny_line),
                 "--data.train_batch_size", "4", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--default_root_dir", str(tmp_path)])
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert checkpoints
    restored = StreamingPadim.load_from_checkpoint(checkpoints[0], weights_only=False)
    assert restored.model.is_fitted and restored.model.gaussian.n_samples == 7
