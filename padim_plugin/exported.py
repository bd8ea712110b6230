"""Export a fitted StreamingPadim to ONNX or OpenVINO IR, and check an export against the model.

Export goes through anomalib's own ``to_onnx`` (the path ``Engine.export`` takes); OpenVINO IR is
converted from that ONNX export, as anomalib's ``to_openvino`` does, by :func:`openvino_from_onnx`,
so that one ONNX export can give both formats. The graph holds the whole pipeline: resize and
normalisation, backbone, Mahalanobis map, blur, and the post-processor with the line's thresholds.
``padim_plugin.runtime.ExportedModel`` runs the result without torch. The ONNX exporter writes the
weights as external data beside ``model.onnx`` (``model.onnx.data``), so models past protobuf's
2 GiB limit export and load.

The post-processor clamps normalised scores and maps into 0..1, so two exports that agree after
it may still differ below or above the calibrated range; :func:`raw_outputs` exports and runs the
model without it, which is how the numbers themselves are compared.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino
import torch

from .runtime import FORMATS, ExportedModel, relative_error
from .scoring import image_size


def export_model(model: torch.nn.Module, export_format: str, folder: Path,
                 input_size: tuple[int, int] | None = None) -> Path:
    """Export a fitted model with anomalib's exporter; returns the ``.onnx`` or ``.xml`` path.

    ``input_size`` fixes the input's height and width (the graph resizes to the model's image size
    itself); by default the model's own image size.
    """
    if export_format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {export_format!r}")
    size = input_size or image_size(model)
    model = model.cpu().eval()
    if export_format == "onnx":
        return model.to_onnx(folder, input_size=size)
    with tempfile.TemporaryDirectory() as scratch:
        return openvino_from_onnx(model.to_onnx(Path(scratch), input_size=size), folder)


def openvino_from_onnx(onnx_path: Path, folder: Path) -> Path:
    """OpenVINO IR (float32) converted from an ONNX export, in ``folder`` where anomalib's
    ``to_openvino`` puts it (``weights/openvino/model.xml``); returns the ``.xml`` path."""
    target = folder / "weights" / "openvino" / f"{onnx_path.stem}.xml"
    target.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(openvino.convert_model(onnx_path), target, compress_to_fp16=False)
    return target


@contextmanager
def raw_outputs(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model without its post-processor for the duration: raw scores and maps, unclamped."""
    post_processor = model.post_processor
    model.post_processor = None
    try:
        yield model
    finally:
        model.post_processor = post_processor


def compare_with_torch(model: torch.nn.Module, exported: ExportedModel,
                       images: np.ndarray) -> dict[str, float]:
    """Relative error of the exported model's score and map against the torch model's, same input."""
    with torch.no_grad():
        expected = model.cpu().eval()(torch.from_numpy(np.asarray(images, dtype=np.float32)))
    outputs = exported(images)
    return {name: relative_error(outputs[name], getattr(expected, name).numpy())
            for name in ("pred_score", "anomaly_map")}


def raw_errors(model: torch.nn.Module, export_format: str, folder: Path, images: np.ndarray,
               input_size: tuple[int, int] | None = None) -> dict[str, float]:
    """Export the model without post-processing into ``folder`` and compare its raw outputs with
    torch's on ``images``: the check that clamping cannot hide."""
    with raw_outputs(model):
        path = export_model(model, export_format, folder, input_size)
        return compare_with_torch(model, ExportedModel(path), images)
