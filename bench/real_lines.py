"""A real product line under the three roles (train, validation, test), beside anomalib's Padim.

Magnetic Tile Defects arrives as a team would hand it over: flat folders of normal images and of
defect images per kind, with or without masks. Each folder set is imported with
``padim-mlops data add`` into a scratch project, so every image gets its role from the stable hash
of params.yaml ``data.split``, exactly as in production. Then, on the pulled line:

- ours: ``flows.model.fit.fit_line`` (fit on train, threshold on validation only) and
  ``flows.model.evaluate.evaluate`` on test;
- reference (no-mask line only): anomalib's own ``PadimModel`` with our backbone weights and channel
  subset, fitted on the same train images, thresholded by anomalib's ``F1AdaptiveThreshold`` on the
  same validation images (what its post-processor does in the validation pass), scored on test.

Both models' image metrics come from ``flows.model.evaluate.image_metrics`` (defect when score >
threshold), so the definitions are identical. "optimistic F1" picks the threshold F1-optimally on
the test split itself, as the single-split handling used to: its gap to the validation-threshold F1
is how optimistic those figures were. "fit s" covers the fit on train, scoring validation and
choosing the threshold (ours decodes in its dataloader; the reference decodes inside the timing
too). The masked line must reproduce the unmasked line's image metrics (same roles, same images)
and adds pixel AUROC and AUPRO::

    .venv/bin/python bench/real_lines.py [--data PATH] [--out DIR]

A markdown table is printed; raw figures go to ``DIR/real_lines.json`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import yaml
from anomalib.metrics.threshold import F1AdaptiveThreshold

from flows.cli import main as cli
from flows.config import LineParams, load_params
from flows.data.store import DataStore
from flows.model.evaluate import evaluate, image_metrics, role_counts
from flows.model.fit import fit_line
from flows.model.thresholds import f1_optimal_threshold
from padim_plugin import StreamingPadim
from padim_plugin.mvtec import mvtec_samples

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]  # neither tests/ nor bench/ is an installed package

import padim_vs_anomalib as pva  # noqa: E402

from tests.mtd import mtd_flat_folders  # noqa: E402
from tests.projects import init_project  # noqa: E402

# the settings the reference is compared under, pinned over the repo's defaults
PINNED = {"model": {"backbone": "efficientnet_lite0", "n_features": 100}, "data": {"image_size": 256}}
LINES = {"mtd_flat": False, "mtd_masks": True}  # line -> imported with masks
COLUMNS = ("ours (no masks)", "ours (masks)", "anomalib Padim (no masks)")


@dataclass
class Result:
    """One model on one line: test metrics at its validation threshold, and how it got there."""

    metrics: dict[str, Any]  # flows.model.evaluate's names, plus optimistic_f1
    threshold: float
    rule: str
    fit_s: float
    scores: dict[str, float]  # test image (path within the line) -> raw score

    def summary(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "threshold": self.threshold, "rule": self.rule, "fit_s": self.fit_s}


def optimistic_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """F1 at the threshold picked F1-optimally on these same (test) images: the old single-split figure."""
    return image_metrics(labels, scores, f1_optimal_threshold(labels, scores))["image_f1"]


def scores_by_image(images: Sequence[str], scores: np.ndarray, line_path: Path) -> dict[str, float]:
    """{role/label/name: score}, comparable between two lines holding the same images."""
    return {Path(image).relative_to(line_path).as_posix(): float(score)
            for image, score in zip(images, scores, strict=True)}


# --------------------------------------------------------------------------- project and data


def make_project(root: Path) -> None:
    """A git + DVC project whose params.yaml is the repo's defaults, with the compared settings pinned."""
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())["defaults"]
    for section, values in PINNED.items():
        defaults[section] |= values
    params = yaml.safe_dump({"defaults": defaults, "lines": {}}, sort_keys=False)
    init_project(root, root.parent / "remote", params)


def add_line(root: Path, line: str, normal: Path, defects: Path, masks: Path | None) -> Path:
    """Import flat folders as a product line does (roles by hash); the pulled version's folder."""
    argv = ["--root", str(root), "data", "add", line, "--normal", str(normal), "--defects", str(defects)]
    if cli(argv + (["--masks", str(masks)] if masks else [])):
        raise RuntimeError(f"padim-mlops data add {line} failed (see stderr)")
    return DataStore(root).pull(line).path


def image_roles(line_path: Path) -> set[str]:
    """Every image as role/label/name: equal sets mean equal roles."""
    return {Path(image).relative_to(line_path).as_posix() for image in mvtec_samples(line_path).image_path}


# --------------------------------------------------------------------------- models


def run_ours(params: LineParams, line_path: Path, work_dir: Path) -> tuple[StreamingPadim, Result]:
    """The production path: fit_line, then evaluate on test."""
    started = time.perf_counter()
    model, calibration = fit_line(params, line_path, work_dir)
    fit_s = time.perf_counter() - started
    evaluation = evaluate(model, params, line_path, work_dir)
    metrics = evaluation.metrics | {"optimistic_f1": optimistic_f1(evaluation.labels, evaluation.scores)}
    scores = scores_by_image(evaluation.image_paths, evaluation.scores, line_path)
    return model, Result(metrics, calibration.image_threshold, calibration.image_rule, fit_s, scores)


def reference_scores(reference: torch.nn.Module, images: Sequence[str], params: LineParams) -> np.ndarray:
    """Raw image scores of anomalib's PadimModel."""
    batches = pva.decode_images(images, params.data.image_size).split(params.data.eval_batch_size)
    outputs: list = []
    pva.run_batches(reference, batches, outputs)
    return torch.cat([output.pred_score.flatten() for output in outputs]).double().numpy()


def run_reference(ours: StreamingPadim, params: LineParams, line_path: Path) -> Result:
    """anomalib's PadimModel on the same roles, thresholded the way anomalib's post-processor does."""
    reference = pva.build_anomalib(ours.model)
    train, validation, test = (mvtec_samples(line_path, split) for split in ("train", "val", "test"))
    started = time.perf_counter()
    batches = pva.decode_images(train.image_path, params.data.image_size).split(params.data.train_batch_size)
    with torch.no_grad():
        pva.anomalib_candidate(reference).fit(batches)
    del batches
    validation_labels = validation.label_index.to_numpy()
    threshold_metric = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    threshold_metric.update(SimpleNamespace(
        pred_score=torch.from_numpy(reference_scores(reference, validation.image_path, params)),
        gt_label=torch.from_numpy(validation_labels)))
    threshold = float(threshold_metric.compute())
    fit_s = time.perf_counter() - started
    normal, defect = np.bincount(validation_labels, minlength=2)
    rule = f"anomalib F1AdaptiveThreshold on validation ({normal} normal, {defect} defect images)"
    labels, scores = test.label_index.to_numpy(), reference_scores(reference, test.image_path, params)
    metrics = role_counts(line_path) | image_metrics(labels, scores, threshold)
    metrics["optimistic_f1"] = optimistic_f1(labels, scores)
    return Result(metrics, threshold, rule, fit_s, scores_by_image(test.image_path, scores, line_path))


# --------------------------------------------------------------------------- reporting

IMAGE_METRICS = ("image_auroc", "image_f1", "image_precision", "image_recall", "test_normal_fpr",
                 "optimistic_f1")
ROWS = (  # (key, label, digits); threshold, rule and fit_s are Result fields, the rest metrics
    ("image_auroc", "image AUROC", 4),
    ("image_f1", "test F1 @ validation threshold", 4),
    ("image_precision", "test precision @ validation threshold", 4),
    ("image_recall", "test recall @ validation threshold", 4),
    ("test_normal_fpr", "test-normal FPR @ validation threshold", 4),
    ("optimistic_f1", "F1 with threshold picked on test (optimistic)", 4),
    ("threshold", "image threshold (raw score)", 3),
    ("rule", "threshold rule", 0),
    ("pixel_auroc", "pixel AUROC", 4),
    ("pixel_aupro", "pixel AUPRO (FPR <= 0.3)", 4),
    ("train_images", "train images", 0),
    ("validation_normal_images", "validation normal images", 0),
    ("validation_defect_images", "validation defect images", 0),
    ("test_normal_images", "test normal images", 0),
    ("test_defect_images", "test defect images", 0),
    ("fit_s", "fit s (train fit + validation scores + threshold)", 1),
)


def cell(result: Result, key: str) -> float | str | None:
    return getattr(result, key) if key in ("threshold", "rule", "fit_s") else result.metrics.get(key)


def show(value: float | str | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else f"{value:.{digits}f}"


def markdown_table(results: Sequence[Result]) -> str:
    """One row per figure, columns as COLUMNS; the ratio is ours (no masks) over anomalib."""
    lines = [f"| metric | {' | '.join(COLUMNS)} | ratio ours/anomalib |", "|---|---:|---:|---:|---:|"]
    for key, label, digits in ROWS:
        values = [cell(result, key) for result in results]
        ours, reference = values[0], values[-1]
        numeric = isinstance(ours, float | int) and isinstance(reference, float | int) and reference
        ratio = show(ours / reference, 3) if numeric else "n/a"
        lines.append(f"| {label} | {' | '.join(show(value, digits) for value in values)} | {ratio} |")
    return "\n".join(lines)


def mask_check(flat: Result, masked: Result, same_roles: bool) -> dict[str, Any]:
    """Masks must change nothing image-level: same roles, same test images, same scores and metrics."""
    common = flat.scores.keys() & masked.scores.keys()
    return {
        "same_roles": same_roles,
        "same_test_images": flat.scores.keys() == masked.scores.keys(),
        "max_abs_score_difference": max(abs(flat.scores[key] - masked.scores[key]) for key in common),
        "max_abs_image_metric_difference": max(abs(flat.metrics[key] - masked.metrics[key])
                                               for key in IMAGE_METRICS),
    }


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=pva.DEFAULT_DATA, help="MTD in MVTec layout")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="folder for real_lines.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(pva.available_cores())
    started = time.perf_counter()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="real-lines-") as scratch:
        root = Path(scratch) / "project"
        make_project(root)
        line_paths = {}
        for line, masks in LINES.items():
            print(f"{line}: importing", file=sys.stderr, flush=True)
            folders = mtd_flat_folders(Path(scratch) / f"{line}_source", masks, args.data)
            line_paths[line] = add_line(root, line, *folders)
            params = load_params(root / "params.yaml").line(line)
            model, results[line] = run_ours(params, line_paths[line], Path(scratch) / "work" / line)
            print(f"{line}: ours fitted in {results[line].fit_s:.0f} s", file=sys.stderr, flush=True)
            if not masks:
                results["anomalib"] = run_reference(model, params, line_paths[line])
                print(f"{line}: anomalib fitted in {results['anomalib'].fit_s:.0f} s", file=sys.stderr,
                      flush=True)
        same_roles = image_roles(line_paths["mtd_flat"]) == image_roles(line_paths["mtd_masks"])
    check = mask_check(results["mtd_flat"], results["mtd_masks"], same_roles)
    table = markdown_table([results["mtd_flat"], results["mtd_masks"], results["anomalib"]])
    total_s = time.perf_counter() - started
    out = args.out / "real_lines.json"
    print(table)
    print(f"\nmasks vs no masks: {', '.join(f'{key} {value}' for key, value in check.items())}")
    print(f"total {total_s:.0f} s; raw figures in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {"data": str(args.data), "pinned_params": PINNED, "threads": torch.get_num_threads()},
        "environment": pva.environment(),
        "total_s": total_s,
        "runs": {name: result.summary() for name, result in results.items()},
        "mask_check": check,
        "table": table,
    }
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
