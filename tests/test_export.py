"""ONNX and OpenVINO exports of a fitted StreamingPadim, run without torch, against the torch model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from PIL import Image

from flows.config import LineParams
from flows.train import fit_line
from padim_plugin import StreamingPadim
from padim_plugin.exported import ExportedModel, compare_with_torch, export_model

from .conftest import write_mvtec_folder
from .mtd import MTD, fitted_on_mtd, mtd_images

PARAMS = LineParams(name="line", model={"n_features": 8},
                    data={"image_size": 64, "train_batch_size": 4, "eval_batch_size": 4})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamingPadim, np.ndarray]:
    """A calibrated model and its line's test images as an exported model takes them."""
    base = tmp_path_factory.mktemp("export")
    line = write_mvtec_folder(base / "line", 10, 3, 3, n_validation=3)
    model, _ = fit_line(PARAMS, line, base / "work")
    files = sorted((line / "test").rglob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])
    return model.cpu().eval(), images.transpose(0, 3, 1, 2).astype(np.float32) / 255


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_exports_score_and_label_as_the_torch_model(fitted: tuple, tmp_path: Path,
                                                    export_format: str) -> None:
    model, images = fitted
    exported = ExportedModel(export_model(model, export_format, tmp_path))
    errors = compare_with_torch(model, exported, images)
    assert errors["pred_score"] <= 1e-3 and errors["anomaly_map"] <= 1e-3, errors
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).pred_label.numpy()
    np.testing.assert_array_equal(exported(images)["pred_label"], expected)  # thresholds travel along
    assert expected.any() and not expected.all()


def test_engine_export_to_openvino_takes_anomalibs_path(fitted: tuple, tmp_path: Path) -> None:
    model, images = fitted
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path,
                         input_size=(64, 64))
    assert path.suffix == ".xml"
    errors = compare_with_torch(model, ExportedModel(path), images)
    assert max(errors.values()) <= 1e-3, errors


def test_onnx_weights_live_in_external_data_that_moves_with_the_model(fitted: tuple, tmp_path: Path) -> None:
    """What lets models past protobuf's 2 GiB export: the graph file holds no weights."""
    model, images = fitted
    path = export_model(model, "onnx", tmp_path / "export")
    graph = onnx.load(path, load_external_data=False).graph
    shape = list(model.model.whitening.shape)
    locations = [tensor.data_location for tensor in graph.initializer if list(tensor.dims) == shape]
    assert locations == [onnx.TensorProto.EXTERNAL]
    assert path.with_name(path.name + ".data").stat().st_size >= model.model.whitening.numel() * 4
    moved = Path(shutil.copytree(path.parent, tmp_path / "elsewhere")) / path.name
    shutil.rmtree(tmp_path / "export")
    assert max(compare_with_torch(model, ExportedModel(moved), images).values()) <= 1e-3


def test_exporting_an_unknown_format_or_running_a_non_model_file_is_refused(fitted: tuple,
                                                                           tmp_path: Path) -> None:
    model, _ = fitted
    with pytest.raises(ValueError, match="export format must be one of"):
        export_model(model, "tensorrt", tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not an exported model"):
        ExportedModel(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="no exported model"):
        ExportedModel(tmp_path / "missing.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_exports_match_torch_on_real_images(tmp_path: Path, export_format: str) -> None:
    if not MTD.is_dir():
        pytest.skip(f"real data set not found at {MTD}")
    model = fitted_on_mtd(StreamingPadim(n_features=100, evaluator=False, visualizer=False,
                                         pre_processor=StreamingPadim.configure_pre_processor((256, 256))),
                          n_train=40)
    images = mtd_images("test", 16, 256)
    errors = compare_with_torch(model, ExportedModel(export_model(model, export_format, tmp_path)), images)
    assert errors["pred_score"] <= 1e-3 and errors["anomaly_map"] <= 1e-3, errors
