"""Run an exported StreamingPadim (ONNX or OpenVINO IR) on the CPU: numpy and the runtime, no torch.

Input: float32 (N, 3, H, W) RGB in 0..1 at the exported size. Outputs by name: ``pred_score``
(N, 1) normalised so the threshold sits at 0.5, ``pred_label``, ``anomaly_map`` (N, 1, H, W) and
``pred_mask`` (an export without post-processing gives raw ``pred_score`` and ``anomaly_map`` only).

OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it, which moves scores by
a fraction of a percent; ``ExportedModel`` asks for float32 unless told otherwise. ONNX Runtime's
threads are told not to spin between calls, so an idle session does not take a core from
whatever runs next.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .score_log import ScoreLogWriter, scored_rows

FORMATS = ("onnx", "openvino")  # export formats, and the runtimes that run them
# what ``padim-mlops export`` writes beside the model: version, data, thresholds, checks
EXPORT_MANIFEST = "export.json"


class ExportedModel:
    """An exported model on the CPU: ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``.

    Args:
        path: ``model.onnx`` or ``model.xml`` as written by ``padim_plugin.exported.export_model``.
        threads: CPU threads for the runtime; None lets it choose.
        precision: OpenVINO's inference precision ("f32", or "bf16"/"f16" where the CPU has them).
    """

    def __init__(self, path: Path | str, threads: int | None = None, precision: str = "f32") -> None:
        self.path = Path(path)
        if self.path.suffix not in (".onnx", ".xml"):
            raise ValueError(f"{self.path}: not an exported model (.onnx or OpenVINO .xml)")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no exported model there")
        if self.path.suffix == ".onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(self.path), options,
                                                   providers=["CPUExecutionProvider"])
            self.input_name = session.get_inputs()[0].name
            self.output_names = [output.name for output in session.get_outputs()]
            self._run = lambda images: dict(zip(
                self.output_names, session.run(None, {self.input_name: images}), strict=True))
        else:
            import openvino

            config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
            self.input_name = compiled.inputs[0].get_any_name()
            self.output_names = [output.get_any_name() for output in compiled.outputs]
            # a new request per call: safe to share between threads
            self._run = lambda images: {output.get_any_name(): value
                                        for output, value in compiled(images).items()}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a float32 batch (N, 3, H, W) in 0..1."""
        return self._run(np.ascontiguousarray(images, dtype=np.float32))

    def manifest(self) -> dict[str, Any]:
        """The ``export.json`` beside the model (``padim-mlops export`` writes it)."""
        path = self.path.parent / EXPORT_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no export manifest; 'padim-mlops export' writes it, to log"
                                    " scores with")
        return json.loads(path.read_text())


def score_and_log(model: ExportedModel, pixels: np.ndarray, writer: ScoreLogWriter, sources: Sequence[str],
                  keep_images: bool = False) -> dict[str, np.ndarray]:
    """Score uint8 RGB images (N, H, W, 3) at the export's size, and add a row per image to the
    line's production log (``writer``), with the version, data and threshold of the export's
    manifest: what a program beside the line runs."""
    manifest = model.manifest()
    outputs = model(np.asarray(pixels).transpose(0, 3, 1, 2) / 255.0)
    scores, labels = outputs["pred_score"].ravel(), outputs["pred_label"].ravel()
    writer.add(scored_rows(list(pixels), sources, scores, labels, manifest["version"], manifest["data_md5"],
                           manifest["raw_thresholds"]["image"], keep_images))
    return outputs


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference over the expected values' largest magnitude: the error relative
    to the scale of a map, which per-element ratios are not near its zeros."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / (scale or 1.0))
