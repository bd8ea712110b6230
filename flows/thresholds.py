"""Threshold and normalisation rules, from validation scores only (pure functions).

The image threshold is the F1-optimal one on validation when validation has defect images, else a
quantile of the validation-normal scores (a normal-only line, or one without defects held out for
validation). The pixel threshold follows the same rule on pixels of validation images that carry
ground truth (normal images count as empty masks). A score is anomalous when it is strictly above
the threshold, as in anomalib's post-processor; F1-optimal thresholds sit halfway between the two
scores they separate, so they do not hinge on one image's exact score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Raw-score thresholds and min/max for anomalib's normalisation, with the rule that chose each."""

    image_threshold: float
    image_rule: str
    pixel_threshold: float
    pixel_rule: str
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float

    def as_params(self) -> dict[str, float | str]:
        """``{"calibration.image_threshold": ...}``, for logging as MLflow params."""
        return {f"calibration.{name}": value for name, value in asdict(self).items()}


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold t maximising F1 of ``scores > t`` (labels 1 = defect; both classes present)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("an F1-optimal threshold needs normal and defect samples")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_positives = np.cumsum(sorted_labels)
    predicted = np.arange(1, len(scores) + 1)
    # cut only between distinct scores: the last index of each run of equal scores
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp, n_predicted = true_positives[last_of_run], predicted[last_of_run]
    f1 = 2 * tp / (n_predicted + labels.sum())
    best = int(np.argmax(f1))
    cut_scores = sorted_scores[last_of_run]
    lowest_positive = np.float32(cut_scores[best])
    below = np.float32(cut_scores[best + 1]) if best + 1 < len(cut_scores) else None
    # the model stores thresholds in float32: choose one that separates the scores there too
    threshold = np.float32((lowest_positive + below) / 2) if below is not None else lowest_positive
    if not (below is None or below < threshold) or not threshold < lowest_positive:
        threshold = np.nextafter(lowest_positive, np.float32(-np.inf))
    return float(threshold)


def quantile_threshold(normal_scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of normal scores. New normal images exceed it at a rate of about
    ``max(1 - quantile, 1 / (N + 1))`` for N validation normals: below N = 1 / (1 - quantile)
    (200 at 0.995) the threshold sits near the largest normal score and false alarms run higher."""
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    if normal_scores.size == 0:
        raise ValueError("a quantile threshold needs normal validation samples")
    return float(np.quantile(normal_scores, quantile))


def choose_threshold(labels: np.ndarray, scores: np.ndarray, quantile: float, unit: str) -> tuple[float, str]:
    """F1-optimal when defects are present, else the normal quantile; returns (threshold, rule)."""
    labels = np.asarray(labels).astype(bool)
    n_defect, n_normal = int(labels.sum()), int((~labels).sum())
    if n_defect and n_normal:
        rule = f"F1-optimal on validation ({n_normal} normal, {n_defect} defect {unit})"
        return f1_optimal_threshold(labels, scores), rule
    rule = f"quantile {quantile} of {n_normal} normal validation {unit}"
    return quantile_threshold(np.asarray(scores)[~labels], quantile), rule


def calibrate(image_labels: np.ndarray, image_scores: np.ndarray, pixel_labels: np.ndarray,
              pixel_scores: np.ndarray, all_pixel_scores: tuple[float, float],
              quantile: float) -> Calibration:
    """Thresholds and normalisation of one model from its validation outputs.

    ``pixel_labels``/``pixel_scores``: pixels of the validation images with ground truth (normal
    images, whose masks are empty by definition, and defect images with a mask);
    ``all_pixel_scores``: (min, max) over every validation map.
    """
    image_threshold, image_rule = choose_threshold(image_labels, image_scores, quantile, "images")
    pixel_threshold, pixel_rule = choose_threshold(pixel_labels, pixel_scores, quantile, "pixels")
    image_scores = np.asarray(image_scores, dtype=np.float64)
    return Calibration(
        image_threshold=image_threshold, image_rule=image_rule,
        pixel_threshold=pixel_threshold, pixel_rule=pixel_rule,
        image_min=float(image_scores.min()), image_max=float(image_scores.max()),
        pixel_min=float(all_pixel_scores[0]), pixel_max=float(all_pixel_scores[1]),
    )
