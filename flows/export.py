"""Export a registered line model to ONNX or OpenVINO IR for the line's inference machines.

The version behind an alias is loaded as data (never a pickle) and exported with anomalib's
exporter. Before anything lands in ``out``, two checks on a fixed probe batch: the same export
without post-processing must give the torch model's raw scores and maps within 1e-3 (relative to
the map's scale; the post-processor's clamp cannot hide a difference there), and the export itself
must give the torch model's labels. Then the folder is put in place whole, with ``export.json``:
which model and data it is, its input and outputs, its thresholds, its files' SHA-256 and the
measured agreement. Nothing is written to the registry.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from padim_plugin.artifact import file_sha256, package_versions
from padim_plugin.exported import FORMATS, export_model, raw_errors
from padim_plugin.runtime import EXPORT_MANIFEST, ExportedModel
from padim_plugin.scoring import image_size

from .data.folders import swapped_in
from .registry.registry import TAG, Registry, model_name

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3
RUNTIME_NOTES = {
    "openvino": "compile with INFERENCE_PRECISION_HINT f32 (padim_plugin.runtime.ExportedModel does):"
                " OpenVINO's CPU default is bfloat16 where the CPU has it",
    "onnx": "onnxruntime, CPUExecutionProvider; model.onnx.data must stay beside model.onnx",
}
OUTPUTS = {"pred_score": "(N, 1) normalised: the line's threshold sits at 0.5", "pred_label": "(N, 1) bool",
           "anomaly_map": "(N, 1, H, W) normalised like pred_score", "pred_mask": "(N, 1, H, W) bool"}


class ExportError(RuntimeError):
    """An export disagrees with the model it came from, so it was not written."""


@dataclass(frozen=True)
class ExportReport:
    model: Path  # model.onnx or model.xml
    manifest: Path
    errors: dict[str, float]  # raw output name -> relative error against torch on the probe batch


def export_line(registry: Registry, line: str, export_format: str, out: Path, alias: str = "champion",
                input_size: tuple[int, int] | None = None) -> ExportReport:
    """Export ``models:/padim-<line>@<alias>`` to ``out/padim-<line>-v<N>-<format>/``."""
    if export_format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {export_format!r}")
    version = registry.alias(line, alias)
    if version is None:
        raise KeyError(f"{model_name(line)} has no @{alias} in {registry.uri}")
    model = registry.load_model(line, str(version.version))
    size = input_size or image_size(model)
    target = out / f"{model_name(line)}-v{version.version}-{export_format}"
    out.mkdir(parents=True, exist_ok=True)
    probe = probe_images(size)
    started = time.monotonic()

    def done(step: int, what: str) -> None:
        logger.info("%s v%s: [%d/3] %s, %.1f s", model_name(line), version.version, step, what,
                    time.monotonic() - started)

    def refuse_if(problem: str | None) -> None:
        if problem:
            raise ExportError(f"{model_name(line)} v{version.version}: the {export_format} export {problem};"
                              " not written")

    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as scratch:
        errors = raw_errors(model, export_format, Path(scratch) / "raw", probe, size)
        done(1, f"raw {export_format} outputs compared with torch on {len(probe)} probe images")
        refuse_if(raw_disagreement(errors))  # before the slow part: the export with post-processing
        path = export_model(model, export_format, Path(scratch) / "export", size)
        done(2, f"exported to {export_format}")
        exported = ExportedModel(path)
        with torch.no_grad():
            expected = model(torch.from_numpy(probe)).pred_label.numpy()
        labels_agree = bool((exported(probe)["pred_label"] == expected).all())
        done(3, "labels compared with torch")
        refuse_if(None if labels_agree else "labels the probe images otherwise than the model")
        manifest = {
            "model": model_name(line),
            "version": str(version.version),
            "alias": alias,
            "format": export_format,
            "data_md5": version.tags.get(f"{TAG}data_md5", ""),
            "image_size": list(image_size(model)),
            "input": {"name": exported.input_name, "shape": ["N", 3, *size], "dtype": "float32",
                      "values": "RGB in 0..1; the graph resizes and normalises"},
            "outputs": {name: OUTPUTS.get(name, "") for name in exported.output_names},
            "raw_thresholds": {"image": float(model.post_processor._image_threshold),
                               "pixel": float(model.post_processor._pixel_threshold)},
            "runtime": RUNTIME_NOTES[export_format],
            "raw_relative_error_vs_torch": errors,
            "files": {p.name: file_sha256(p) for p in sorted(path.parent.iterdir())},
            "packages": package_versions("padim-plugin", "anomalib", "torch", "onnx", "onnxruntime",
                                         "openvino"),
        }
        (path.parent / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        with swapped_in(path.parent, target):
            pass
    return ExportReport(target / path.name, target / EXPORT_MANIFEST, errors)


def raw_disagreement(raw_errors: dict[str, float]) -> str | None:
    """Why raw outputs this far from the model's forbid the export, or None when they agree."""
    worst = max(raw_errors.values())
    if not worst <= PARITY_TOLERANCE:  # NaN included
        return f"differs from the model by {worst:.2e} relative (tolerance {PARITY_TOLERANCE})"
    return None


def probe_images(size: tuple[int, int], count: int = 2, seed: int = 0) -> np.ndarray:
    """A fixed batch (N, 3, H, W) of smooth random images in 0..1: the same probe for every export."""
    generator = np.random.default_rng(seed)
    coarse = generator.random((count, 3, 8, 8), dtype=np.float32)
    return np.kron(coarse, np.ones((1, 1, -(-size[0] // 8), -(-size[1] // 8)), dtype=np.float32))[
        ..., : size[0], : size[1]]

