"""ONNX and OpenVINO exports of a fitted StreamingPadim, run without torch, against the torch model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine

from padim_plugin import StreamingPadim
from padim_plugin.exported import compare_with_torch, export_model, openvino_from_onnx, raw_outputs
from padim_plugin.runtime import ExportedModel

from ..fits import Fit
from ..mtd import MTD, fitted_on_mtd, mtd_images, mtd_model

Fitted = tuple[StreamingPadim, np.ndarray]  # a calibrated model, its line's test images (N, 3, H, W) 0..1


@pytest.fixture(scope="module")
def fitted(tiny_fit: Fit) -> Fitted:
    """A calibrated model and its line's test images as an exported model takes them."""
    return tiny_fit.model, tiny_fit.inputs


@pytest.fixture(scope="module")
def fitted_with_options(tiny_fit_with_options: Fit) -> Fitted:
    """The same with aligned maps, a projection and pooled Gaussians."""
    return tiny_fit_with_options.model, tiny_fit_with_options.inputs


Exports = Callable[[StreamingPadim, str, bool], Path]  # (model, format, raw) -> model.onnx or model.xml


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """What export_model makes, once per model and kind for the module (an ONNX export takes tens of
    seconds): the ONNX export with the post-processor or without it (raw), and the OpenVINO IR
    converted from that ONNX export, as export_model converts it."""

    @cache
    def onnx_export(model: StreamingPadim, raw: bool) -> Path:
        folder = tmp_path_factory.mktemp("raw" if raw else "export")
        with raw_outputs(model) if raw else nullcontext():
            return export_model(model, "onnx", folder)

    @cache
    def export(model: StreamingPadim, export_format: str, raw: bool) -> Path:
        onnx = onnx_export(model, raw)
        return onnx if export_format == "onnx" else openvino_from_onnx(onnx, onnx.parents[2])

    return export


def raw_export_errors(model: StreamingPadim, path: Path, images: np.ndarray) -> dict[str, float]:
    """The raw export's relative errors against the torch model without post-processing: unclamped,
    nothing hidden."""
    with raw_outputs(model):
        return compare_with_torch(model, ExportedModel(path), images)


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
@pytest.mark.parametrize("model_fixture", ["fitted", "fitted_with_options"])
def test_exports_give_the_torch_models_raw_outputs(model_fixture: str, exports: Exports, export_format: str,
                                                   request: pytest.FixtureRequest) -> None:
    model, images = request.getfixturevalue(model_fixture)
    errors = raw_export_errors(model, exports(model, export_format, True), images)
    assert errors["pred_score"] <= 1e-3 and errors["anomaly_map"] <= 1e-3, errors


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_exports_label_images_as_the_torch_model(fitted: Fitted, exports: Exports,
                                                 export_format: str) -> None:
    """The thresholds travel with the export (the post-processor is the same for every option)."""
    model, images = fitted
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).pred_label.numpy()
    labels = ExportedModel(exports(model, export_format, False))(images)["pred_label"]
    np.testing.assert_array_equal(labels, expected)
    assert expected.any() and not expected.all()


def test_engine_export_to_openvino_with_a_dynamic_input_size(fitted: Fitted,
                                                             tmp_path: Path) -> None:
    """anomalib's own path, no input size given: any camera resolution goes in, the graph resizes."""
    model, images = fitted
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    with raw_outputs(model):
        path = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path)
        wide = torch.nn.functional.interpolate(torch.from_numpy(images), size=(80, 96)).numpy()
        errors = compare_with_torch(model, ExportedModel(path), wide)
    assert path.suffix == ".xml" and max(errors.values()) <= 1e-3, errors


def test_int8_compression_is_refused(fitted: Fitted, tmp_path: Path) -> None:
    model, _ = fitted
    with pytest.raises(ValueError, match="not supported for StreamingPadim"):
        model.to_openvino(tmp_path, input_size=(64, 64), compression_type=CompressionType.INT8_PTQ)
    assert not any(tmp_path.rglob("*.xml"))


def test_onnx_weights_live_in_external_data_that_moves_with_the_model(
        fitted: Fitted, exports: Exports, tmp_path: Path) -> None:
    """What lets models past protobuf's 2 GiB export: the graph file holds no weights."""
    model, images = fitted
    path = exports(model, "onnx", False)
    graph = onnx.load(path, load_external_data=False).graph
    shape = list(model.model.whitening.shape)
    [whitening] = [tensor for tensor in graph.initializer if list(tensor.dims) == shape]
    assert whitening.data_location == onnx.TensorProto.EXTERNAL
    assert {entry.key: entry.value for entry in whitening.external_data}["location"] == path.name + ".data"
    assert path.with_name(path.name + ".data").stat().st_size >= model.model.whitening.numel() * 4
    copied = Path(shutil.copytree(path.parent, tmp_path / "copied"))
    moved = copied.rename(tmp_path / "moved") / path.name
    assert max(compare_with_torch(model, ExportedModel(moved), images).values()) <= 1e-3


def test_an_export_runs_in_a_process_that_cannot_import_torch(
        fitted: Fitted, exports: Exports, tmp_path: Path) -> None:
    model, images = fitted
    np.save(tmp_path / "images.npy", images)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model(torch.from_numpy(images)).pred_score.numpy())
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "import numpy as np\n"
        "from padim_plugin.runtime import ExportedModel\n"
        "model, images, expected = sys.argv[1:]\n"
        "out = ExportedModel(model, threads=1)(np.load(images))\n"
        "np.testing.assert_allclose(out['pred_score'], np.load(expected), atol=1e-5)\n"
    )
    args = [str(exports(model, "onnx", False)), str(tmp_path / "images.npy"), str(tmp_path / "expected.npy")]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_unknown_formats_and_files_are_refused(fitted: Fitted, tmp_path: Path) -> None:
    model, _ = fitted
    with pytest.raises(ValueError, match="export format must be one of"):
        export_model(model, "tensorrt", tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="not an exported model"):
        ExportedModel(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="no exported model"):
        ExportedModel(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_exports_match_torch_on_real_images(exports: Exports) -> None:
    if not MTD.is_dir():
        pytest.skip(f"real data set not found at {MTD}")
    model = fitted_on_mtd(mtd_model(256), n_train=40)
    images = mtd_images("test", 16, 256)
    for export_format in ("onnx", "openvino"):
        errors = raw_export_errors(model, exports(model, export_format, True), images)
        assert errors["pred_score"] <= 1e-3 and errors["anomaly_map"] <= 1e-3, (export_format, errors)
