"""Score a model on a product line's test split: metrics, and the figures a reviewer looks at.

Metrics: image AUROC, pixel AUROC, pixel AUPRO (FPR up to 0.3) on the raw anomaly scores, and
image F1 at the threshold the model's post-processor chose. Figures: a grid of test images with
heatmaps and ground-truth outlines, the ROC curve, and score histograms per label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from padim_plugin import StreamingPadim

from .config import LineParams
from .train import build_datamodule, engine

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402


@dataclass
class Evaluation:
    """Test-split outputs of one model on one data version."""

    metrics: dict[str, float]
    image_paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    figures: dict[str, Path] = field(default_factory=dict)


def evaluate(model: StreamingPadim, params: LineParams, data_path: Path, work_dir: Path) -> Evaluation:
    """Predict the test split once and compute every metric from those predictions."""
    from anomalib.metrics.aupro import _AUPRO

    datamodule = build_datamodule(params, data_path)
    datamodule.setup()
    # threshold-free metrics need the raw scores: run the model's own post-processor for labels only
    post_processor, model.post_processor = model.post_processor, None
    try:
        batches = engine(work_dir).predict(model=model, dataloaders=datamodule.test_dataloader())
    finally:
        model.post_processor = post_processor
    aupro = _AUPRO(fpr_limit=0.3)
    labels, scores, predicted, pixel_scores, pixel_labels, paths = [], [], [], [], [], []
    for batch in batches:
        labels.append(batch.gt_label.cpu())
        scores.append(batch.pred_score.flatten().cpu())
        predicted.append((batch.pred_score.flatten() >= post_processor.image_threshold).cpu())
        paths += list(batch.image_path)
        if batch.gt_mask is not None:
            maps, masks = batch.anomaly_map.squeeze(1).cpu(), batch.gt_mask.squeeze(1).cpu().int()
            aupro.update(maps, masks)
            pixel_scores.append(maps[:, ::2, ::2].flatten())  # every 4th pixel keeps memory bounded
            pixel_labels.append(masks[:, ::2, ::2].flatten())
    label_array, score_array = torch.cat(labels).numpy(), torch.cat(scores).numpy()
    metrics = {
        "image_auroc": _auroc(label_array, score_array),
        "image_f1": float(f1_score(label_array, torch.cat(predicted).numpy(), zero_division=0)),
        "image_threshold": float(post_processor.image_threshold),
    }
    if pixel_scores and torch.cat(pixel_labels).any():
        metrics["pixel_auroc"] = _auroc(torch.cat(pixel_labels).numpy(), torch.cat(pixel_scores).numpy())
        metrics["pixel_aupro"] = float(aupro.compute())
    evaluation = Evaluation(metrics, paths, label_array, score_array)
    evaluation.figures = draw_figures(evaluation, batches, work_dir / "figures", metrics["image_threshold"])
    return evaluation


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")  # undefined with one class; gates treat NaN as failing
    return float(roc_auc_score(labels, scores))


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
    if len(np.unique(evaluation.labels)) == 2:
        fpr, tpr, _ = roc_curve(evaluation.labels, evaluation.scores)
        axis.plot(fpr, tpr, label=f"AUROC {evaluation.metrics['image_auroc']:.3f}")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="image ROC")
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
