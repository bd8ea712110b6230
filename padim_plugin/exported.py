"""A fitted StreamingPadim exported to ONNX or OpenVINO IR, and run without torch.

Export goes through anomalib's own ``to_onnx`` / ``to_openvino`` (the path ``Engine.export`` takes),
so the graph holds the whole pipeline: resize and normalisation, backbone, Mahalanobis map, blur,
and the post-processor with the line's thresholds. Input: float32 (N, 3, H, W) RGB in 0..1 at the
exported size. Outputs: ``pred_score`` (N, 1) normalised so the threshold sits at 0.5,
``pred_label``, ``anomaly_map`` (N, 1, H, W) and ``pred_mask``.

The ONNX exporter writes the weights as external data beside ``model.onnx`` (``model.onnx.data``),
so models past protobuf's 2 GiB limit export and load. OpenVINO's CPU plugin computes in bfloat16
by default on CPUs that have it, which moves scores by about 0.5%; :class:`ExportedModel` asks for
float32 unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import Resize

FORMATS = ("onnx", "openvino")


class ExportedModel:
    """An exported model on the CPU: ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``.

    Args:
        path: ``model.onnx`` or ``model.xml`` as written by :func:`export_model`.
        threads: CPU threads for the runtime; None lets it choose.
        precision: OpenVINO's inference precision ("f32", or "bf16"/"f16" where the CPU has them).
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no exported model there")
        if self.path.suffix == ".onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(str(self.path), options,
                                                   providers=["CPUExecutionProvider"])
            self.input_name = session.get_inputs()[0].name
            self.output_names = [output.name for output in session.get_outputs()]
            self._run = lambda images: session.run(None, {self.input_name: images})
        elif self.path.suffix == ".xml":
            import openvino

            config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
            self.input_name = compiled.inputs[0].get_any_name()
            self.output_names = [output.get_any_name() for output in compiled.outputs]
            request = compiled.create_infer_request()
            self._run = lambda images: list(request.infer({0: images}).values())
        else:
            raise ValueError(f"{self.path}: not an exported model (.onnx or OpenVINO .xml)")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a float32 batch (N, 3, H, W) in 0..1."""
        return dict(zip(self.output_names, self._run(np.ascontiguousarray(images, dtype=np.float32)),
                        strict=True))


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
    return model.to_openvino(folder, input_size=size)


def image_size(model: torch.nn.Module) -> tuple[int, int]:
    """The (height, width) the model's pre-processor resizes to."""
    transform = model.pre_processor.transform
    resize = next(t for t in getattr(transform, "transforms", [transform]) if isinstance(t, Resize))
    height, width = (resize.size * 2)[:2] if len(resize.size) == 1 else resize.size
    return int(height), int(width)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference over the expected values' largest magnitude: the error relative
    to the scale of a map, which per-element ratios are not near its zeros."""
    scale = float(np.abs(expected).max())
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / (scale or 1.0))


def compare_with_torch(model: torch.nn.Module, exported: ExportedModel,
                       images: np.ndarray) -> dict[str, float]:
    """Relative error of the exported model's score and map against the torch model's, same input."""
    with torch.no_grad():
        expected = model.cpu().eval()(torch.from_numpy(np.asarray(images, dtype=np.float32)))
    outputs = exported(images)
    return {name: relative_error(outputs[name], getattr(expected, name).numpy())
            for name in ("pred_score", "anomaly_map")}
