"""Score a model on a product line's test split: metrics, and the figures a reviewer looks at.

Threshold-free metrics (image AUROC; pixel AUROC and AUPRO over FPR up to 0.3, on the test images
with ground truth) come from raw scores. Thresholded ones use the threshold the model took from
the validation split: image F1, precision and recall, and the false-positive rate on test normal
images, with quantiles of their scores. A metric the test split cannot give (no defects, no masks)
is absent, and ``unavailable`` says why, for the gates to report. Figures: a grid of test images
with heatmaps and ground-truth outlines, the ROC curve, and score histograms per label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from padim_plugin import StreamingPadim
from padim_plugin.mvtec import mvtec_samples
from padim_plugin.scoring import raw_image_threshold

from .config import LineParams
from .predictions import Predictions, predict_role

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

NO_DEFECTS = "the test split has no defect images: a normal-only line"
NO_NORMALS = "the test split has no normal images"
NO_MASKS = "no test defect image has a mask: the line is labelled per image"


@dataclass
class Evaluation:
    """Test-split outputs of one model on one data version."""

    metrics: dict[str, float]
    unavailable: dict[str, str]  # metric -> why this line's test split cannot give it
    image_paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    figures: dict[str, Path] = field(default_factory=dict)


def evaluate(model: StreamingPadim, params: LineParams, data_path: Path, work_dir: Path) -> Evaluation:
    """Predict the test split once and compute every metric from those predictions."""
    test = predict_role(model, params, data_path, "test", work_dir)
    threshold = raw_image_threshold(model)  # set by calibration, from validation
    metrics, unavailable = role_counts(data_path), {}
    for name, value in image_metrics(test.labels, test.scores, threshold).items():
        if isinstance(value, str):
            unavailable[name] = value
        else:
            metrics[name] = value
    metrics |= {"pixel_eval_images": int(test.has_ground_truth.sum()),
                "pixel_eval_defect_images": test.pixel_defect_images}
    if test.pixel_defect_images and test.pixel_labels.any():
        metrics["pixel_auroc"] = float(roc_auc_score(test.pixel_labels, test.pixel_scores))
        metrics["pixel_aupro"] = _aupro(test)
    else:
        why = NO_MASKS if (test.labels == 1).any() else NO_DEFECTS
        unavailable |= {"pixel_auroc": why, "pixel_aupro": why}
    evaluation = Evaluation(metrics, unavailable, test.image_paths, test.labels, test.scores)
    evaluation.figures = draw_figures(evaluation, test.batches, work_dir / "figures", threshold)
    return evaluation


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | str]:
    """Image-level test metrics at ``threshold`` (defect when score > threshold); a string value
    says why that metric cannot be computed on these labels."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    predicted = scores > threshold
    normal, defect = scores[~labels], labels.sum()
    result: dict[str, float | str] = {}
    if len(normal):
        result["test_normal_fpr"] = float(predicted[~labels].mean())
        for q in (50, 95, 99):
            result[f"test_normal_score_q{q}"] = float(np.percentile(normal, q))
    else:
        result |= dict.fromkeys(("test_normal_fpr", "test_normal_score_q50", "test_normal_score_q95",
                                 "test_normal_score_q99"), NO_NORMALS)
    if defect:
        true_positives = float((predicted & labels).sum())
        recall = true_positives / defect
        precision = true_positives / predicted.sum() if predicted.any() else 0.0
        result["image_recall"], result["image_precision"] = recall, precision
        result["image_f1"] = 2 * precision * recall / (precision + recall) if true_positives else 0.0
    else:
        result |= dict.fromkeys(("image_recall", "image_precision", "image_f1"), NO_DEFECTS)
    if defect and len(normal):
        result["image_auroc"] = float(roc_auc_score(labels, scores))
    else:
        result["image_auroc"] = NO_DEFECTS if len(normal) else NO_NORMALS
    return result


def role_counts(data_path: Path) -> dict[str, int]:
    """How many images each role holds, logged beside the metrics they produced."""
    samples = mvtec_samples(data_path)
    count = {(split, label): int(((samples.split == split) & (samples.label_index == label)).sum())
             for split in ("train", "val", "test") for label in (0, 1)}
    return {
        "train_images": count["train", 0],
        "validation_normal_images": count["val", 0],
        "validation_defect_images": count["val", 1],
        "test_normal_images": count["test", 0],
        "test_defect_images": count["test", 1],
    }


def _aupro(test: Predictions) -> float:
    from anomalib.metrics.aupro import _AUPRO

    aupro = _AUPRO(fpr_limit=0.3)
    offset = 0
    for batch in test.batches:
        known = torch.from_numpy(test.has_ground_truth[offset : offset + len(batch.image_path)])
        offset += len(batch.image_path)
        if known.any() and batch.gt_mask is not None:
            maps, masks = batch.anomaly_map.squeeze(1)[known], batch.gt_mask.squeeze(1)[known]
            aupro.update(maps.cpu(), masks.cpu().int())
    return float(aupro.compute())


def write_metrics(evaluation: Evaluation, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n")
    return path


def draw_figures(evaluation: Evaluation, batches: list, folder: Path, threshold: float) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "heatmaps": _heatmap_grid(batches, folder / "heatmaps.png"),
        "roc": _roc_figure(evaluation, folder / "roc.png"),
        "histogram": _histogram(evaluation, folder / "score_histogram.png", threshold),
    }


def _heatmap_grid(batches: list, path: Path, columns: int = 6, rows: int = 3) -> Path:
    """The highest-scoring test images: image, heatmap overlay, ground-truth outline."""
    samples = [(float(s), b, i) for b in batches for i, s in enumerate(b.pred_score.flatten())]
    samples.sort(key=lambda sample: -sample[0])
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (score, batch, index) in zip(axes.flat, samples, strict=False):
        image = batch.image[index].float()
        image = (image - image.min()) / (image.max() - image.min() + 1e-8)
        axis.imshow(image.permute(1, 2, 0).cpu().numpy())
        axis.imshow(batch.anomaly_map[index].squeeze().cpu().numpy(), cmap="jet", alpha=0.4)
        if batch.gt_mask is not None and batch.gt_mask[index].any():
            axis.contour(batch.gt_mask[index].squeeze().cpu().numpy(), levels=[0.5], colors="white",
                         linewidths=1)
        axis.set_title(f"{Path(batch.image_path[index]).parent.name} {score:.1f}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _roc_figure(evaluation: Evaluation, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(4, 4))
    title = "image ROC"
    if "image_auroc" in evaluation.metrics:
        fpr, tpr, _ = roc_curve(evaluation.labels, evaluation.scores)
        axis.plot(fpr, tpr, label=f"AUROC {evaluation.metrics['image_auroc']:.3f}")
    else:
        title = f"image ROC: none, {evaluation.unavailable['image_auroc']}"
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    axis.set(xlabel="false positive rate", ylabel="true positive rate")
    axis.set_title(title, fontsize=8)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _histogram(evaluation: Evaluation, path: Path, threshold: float) -> Path:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, name in ((0, "normal"), (1, "defective")):
        axis.hist(evaluation.scores[evaluation.labels == label], bins=30, alpha=0.6, label=name)
    axis.axvline(threshold, color="black", linestyle="--", label="threshold")
    axis.set(xlabel="image anomaly score", ylabel="images", title="score distribution")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
