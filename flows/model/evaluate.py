"""Score a model on a product line's test split: metrics, and the figures a reviewer looks at.

Threshold-free metrics (image AUROC; pixel AUROC and AUPRO over FPR up to 0.3, on the test images
with ground truth) come from raw scores; the pixel ones from flows.model.curves, which gives
scikit-learn's and anomalib's numbers at a fraction of their cost. Thresholded ones use the
threshold the model took from the validation split: image F1, precision and recall, and the
false-positive rate on test normal images, with quantiles of their scores; the false-alarm rate
and the recall carry exact (Clopper-Pearson) 95% intervals, since a test split of a few dozen
images pins neither down. A metric the test split cannot give (no defects, no masks) is absent,
and ``unavailable`` says why, for the gates to report. Figures: the heatmaps of the worst false
alarms, the missed defects and the hits on one colour scale, the ROC curve, and the operating
point (score histograms and the false-alarm/recall curve at the threshold).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torchvision.transforms.v2 import Resize

from padim_plugin import StreamingPadim
from padim_plugin.images import decode_image
from padim_plugin.mvtec import mvtec_samples
from padim_plugin.scoring import raw_image_threshold, raw_pixel_threshold

from ..config import LineParams
from .curves import AUPRO, auroc
from .features import KeptFeatures
from .predictions import Predictions, ScoredBatch, predict_role
from .thresholds import proportion_interval

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


def evaluate(model: StreamingPadim, params: LineParams, data_path: Path, work_dir: Path,
             kept: KeptFeatures | None = None) -> Evaluation:
    """Predict the test split once (from the ``kept`` features where there are some) and compute
    every metric from those predictions."""
    test = predict_role(model, params, data_path, "test", work_dir, kept)
    threshold = raw_image_threshold(model)  # set by calibration, from validation
    metrics, unavailable = role_counts(data_path), {}
    for name, value in image_metrics(test.labels, test.scores, threshold).items():
        if isinstance(value, str):
            unavailable[name] = value
        else:
            metrics[name] = value
    metrics |= {"pixel_eval_images": int(test.has_ground_truth.sum()),
                "pixel_eval_defect_images": test.pixel_defect_images}
    pixel_level = bool(test.pixel_defect_images and test.pixel_labels.any())
    # AUPRO spends its time in torch's sorts, which release the GIL: the rest runs meanwhile
    with ThreadPoolExecutor(max_workers=1) as background:
        aupro = background.submit(_aupro, test) if pixel_level else None
        if pixel_level:
            metrics["pixel_auroc"] = auroc(test.pixel_labels, test.pixel_scores)
        else:
            why = NO_MASKS if (test.labels == 1).any() else NO_DEFECTS
            unavailable |= {"pixel_auroc": why, "pixel_aupro": why}
        evaluation = Evaluation(metrics, unavailable, test.image_paths, test.labels, test.scores)
        evaluation.figures = draw_figures(evaluation, test.batches, work_dir / "figures", threshold,
                                          raw_pixel_threshold(model))
        if aupro is not None:
            metrics["pixel_aupro"] = aupro.result()
    return evaluation


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | str]:
    """Image-level test metrics at ``threshold`` (defect when score > threshold); a string value
    says why that metric cannot be computed on these labels."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    predicted = scores > threshold
    normal, defect = scores[~labels], labels.sum()
    result: dict[str, float | str] = {}
    if len(normal):
        false_alarms = int(predicted[~labels].sum())
        result["test_normal_fpr"] = false_alarms / len(normal)
        result["test_normal_fpr_low"], result["test_normal_fpr_high"] = proportion_interval(false_alarms,
                                                                                            len(normal))
        for q in (50, 95, 99):
            result[f"test_normal_score_q{q}"] = float(np.percentile(normal, q))
    else:
        result |= dict.fromkeys(("test_normal_fpr", "test_normal_fpr_low", "test_normal_fpr_high",
                                 "test_normal_score_q50", "test_normal_score_q95", "test_normal_score_q99"),
                                NO_NORMALS)
    if defect:
        true_positives = float((predicted & labels).sum())
        recall = true_positives / defect
        result["image_recall_low"], result["image_recall_high"] = proportion_interval(int(true_positives),
                                                                                      int(defect))
        precision = true_positives / predicted.sum() if predicted.any() else 0.0
        result["image_recall"], result["image_precision"] = recall, precision
        result["image_f1"] = 2 * precision * recall / (precision + recall) if true_positives else 0.0
    else:
        result |= dict.fromkeys(("image_recall", "image_recall_low", "image_recall_high", "image_precision",
                                 "image_f1"), NO_DEFECTS)
    if defect and len(normal):
        result["image_auroc"] = float(roc_auc_score(labels, scores))
    else:
        result["image_auroc"] = NO_DEFECTS if len(normal) else NO_NORMALS
    return result


def evaluation_images(data_path: Path) -> list[Path]:
    """The validation and test images of a line's data: the ones calibration and evaluation score."""
    samples = mvtec_samples(data_path)
    return [Path(path) for path in samples.image_path[samples.split.isin(("val", "test"))]]


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
    aupro = AUPRO(fpr_limit=0.3)
    offset = 0
    for batch in test.batches:
        known = torch.from_numpy(test.has_ground_truth[offset : offset + len(batch.image_path)])
        offset += len(batch.image_path)
        if known.any() and batch.gt_mask is not None:
            aupro.update(batch.anomaly_map.squeeze(1)[known], batch.gt_mask[known])
    return float(aupro.compute())


def write_metrics(evaluation: Evaluation, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True) + "\n")
    return path


def draw_figures(evaluation: Evaluation, batches: list[ScoredBatch], folder: Path, threshold: float,
                 pixel_threshold: float) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "heatmaps": _heatmap_panel(batches, folder / "heatmaps.png", threshold, pixel_threshold),
        "roc": _roc_figure(evaluation, folder / "roc.png"),
        "operating_point": _operating_point(evaluation, folder / "operating_point.png", threshold),
    }


def _heatmap_panel(batches: list[ScoredBatch], path: Path, threshold: float, pixel_threshold: float,
                   per_row: int = 6) -> Path:
    """What a reviewer checks first, one row each: the worst false alarms (highest-scored normal
    images), the missed defects (lowest-scored defect images) and the hits (highest-scored defect
    images flagged). One colour scale for every tile, a colour bar with the pixel threshold marked,
    ground-truth outlines where masks exist."""
    samples = [(float(score), int(batch.gt_label[index]), batch, index)
               for batch in batches for index, score in enumerate(batch.pred_score.flatten())]
    normal = sorted((x for x in samples if x[1] == 0), key=lambda x: -x[0])
    defect = sorted((x for x in samples if x[1] == 1), key=lambda x: x[0])
    rows = [("worst false alarms" if normal and normal[0][0] > threshold else "highest-scored normal",
             normal[:per_row]),
            ("missed defects", [x for x in defect if x[0] <= threshold][:per_row]),
            ("hits", [x for x in reversed(defect) if x[0] > threshold][:per_row])]
    rows = [(title, tiles) for title, tiles in rows if tiles] or [("no test images", [])]
    maps = [tile[2].anomaly_map[tile[3]].squeeze().cpu().numpy() for _, tiles in rows for tile in tiles]
    low = min((float(m.min()) for m in maps), default=0.0)
    high = max((float(m.max()) for m in maps), default=1.0)
    figure, axes = plt.subplots(len(rows), per_row, figsize=(2.2 * per_row + 1.2, 2.5 * len(rows)),
                                squeeze=False)
    image_layer = None
    for row, (title, tiles) in enumerate(rows):
        axes[row, 0].set_ylabel(title, fontsize=9)
        for column in range(per_row):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(tiles):
                axis.axis("off")
                continue
            score, label, batch, index = tiles[column]
            heat = batch.anomaly_map[index].squeeze().numpy()
            axis.imshow(_display_image(batch.image_path[index], heat.shape))
            image_layer = axis.imshow(heat, cmap="jet", alpha=0.45, vmin=low, vmax=high)
            if batch.gt_mask is not None and batch.gt_mask[index].any():
                axis.contour(batch.gt_mask[index].numpy(), levels=[0.5], colors="white", linewidths=1)
            flagged = "flagged" if score > threshold else "passed"
            axis.set_title(f"{Path(batch.image_path[index]).parent.name} {score:.1f} {flagged}", fontsize=8)
    if image_layer is not None:
        bar = figure.colorbar(image_layer, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label("pixel anomaly score (raw); black line: pixel threshold", fontsize=8)
        if low <= pixel_threshold <= high:
            bar.ax.axhline(pixel_threshold, color="black", linewidth=2)
    figure.suptitle(f"test images at image threshold {threshold:.1f} (one colour scale)", fontsize=10)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _display_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """The image as the model saw it (resized to its map), RGB uint8."""
    pixels = torch.from_numpy(decode_image(path)).permute(2, 0, 1)
    return Resize(size, antialias=True)(pixels).permute(1, 2, 0).numpy()


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


def _operating_point(evaluation: Evaluation, path: Path, threshold: float) -> Path:
    """Left: the test scores of normal and defect images, with the threshold. Right: the false-alarm
    rate and the recall as the threshold moves, the line's threshold marked."""
    scores, labels = evaluation.scores.astype(np.float64), evaluation.labels.astype(bool)
    figure, (histogram, curve) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.histogram_bin_edges(scores, bins=30) if len(scores) else 10
    for mask, name in ((~labels, "normal"), (labels, "defect")):
        if mask.any():
            histogram.hist(scores[mask], bins=bins, alpha=0.6, label=f"{name} ({int(mask.sum())})")
    histogram.axvline(threshold, color="black", linestyle="--", label="threshold")
    histogram.set(xlabel="image anomaly score (raw)", ylabel="test images", title="scores at the threshold")
    histogram.legend(fontsize=8, loc="upper right")  # "best" searches the data: slow on many images
    cuts = np.unique(np.r_[scores, threshold])
    if (~labels).any():
        curve.plot(cuts, [(scores[~labels] > cut).mean() for cut in cuts], label="false-alarm rate (normal)")
    if labels.any():
        curve.plot(cuts, [(scores[labels] > cut).mean() for cut in cuts], label="recall (defects)")
    curve.axvline(threshold, color="black", linestyle="--", label="threshold")
    fpr, recall = evaluation.metrics.get("test_normal_fpr"), evaluation.metrics.get("image_recall")
    words = ", ".join(f"{name} {value:.2f}" for name, value in (("false alarms", fpr), ("recall", recall))
                      if value is not None)
    curve.set(xlabel="threshold (raw score)", ylabel="share flagged", ylim=(-0.02, 1.02),
              title=f"at the threshold: {words}")
    curve.legend(fontsize=8, loc="upper right")  # where both rates have fallen
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
