"""Operating points: the image threshold a line runs at, from validation scores only (pure functions).

A line chooses the rule in params.yaml's ``thresholds.rule``:

- ``false_alarm_budget`` (the default): the lowest threshold whose false-alarm rate on normal parts
  stays within ``false_alarm_budget`` at ``confidence``: the exact (Clopper-Pearson) upper bound of
  the rate, from the k validation-normal images above it out of n, must not exceed the budget. A
  small validation split cannot fake it: below n = log(1 - confidence) / log(1 - budget) normal
  images even k = 0 is not enough, and the rule says so with that number.
- ``min_recall``: the highest threshold that still flags ``min_recall`` of the validation defects.
- ``f1``: the F1-optimal threshold on validation (a quantile of the normal scores when validation
  holds no defects).

The pixel threshold is the F1-optimal one on pixels of validation images that carry ground truth
(normal images count as empty masks), else the normal quantile. A score is anomalous when it is
strictly above the threshold, as in anomalib's post-processor. Every cut sits halfway between the
two validation scores it separates, in the float32 the model stores thresholds in, so it does not
hinge on one image's exact score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.stats import beta

from ..config import ThresholdParams


@dataclass(frozen=True)
class OperatingPoint:
    """The image threshold, the rule that chose it and the rates it gave on validation."""

    threshold: float
    rule: str  # how it was chosen, in words
    validation_normal_fpr: float  # NaN where validation has no normal images
    validation_recall: float  # NaN where validation has no defect images
    problem: str = ""  # why validation cannot support the rule ("" when it can)


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
    validation_normal_fpr: float = math.nan
    validation_recall: float = math.nan
    unsupported: str = ""  # why validation cannot support the line's rule: the gates refuse it

    def as_params(self) -> dict[str, float | str]:
        """``{"calibration.image_threshold": ...}``, for logging as MLflow params."""
        return {f"calibration.{name}": value for name, value in asdict(self).items()}


def false_alarm_upper_bound(false_alarms: int, normals: int, confidence: float) -> float:
    """The exact one-sided (Clopper-Pearson) upper bound of a rate seen as ``false_alarms`` out of
    ``normals``: the rate p whose chance of showing at most that many is 1 - ``confidence``."""
    if false_alarms >= normals:
        return 1.0
    return float(beta.ppf(confidence, false_alarms + 1, normals - false_alarms))


def proportion_interval(hits: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided (Clopper-Pearson) interval of a rate seen as ``hits`` out of ``trials``."""
    tail = (1 - level) / 2
    low = float(beta.ppf(tail, hits, trials - hits + 1)) if hits > 0 else 0.0
    high = float(beta.ppf(1 - tail, hits + 1, trials - hits)) if hits < trials else 1.0
    return low, high


def normals_needed(budget: float, confidence: float) -> int:
    """The fewest validation-normal images for which a threshold with no false alarm among them
    bounds the false-alarm rate within ``budget`` at ``confidence``."""
    needed = max(1, math.ceil(math.log(1 - confidence) / math.log(1 - budget)))
    while false_alarm_upper_bound(0, needed, confidence) > budget:  # floating point at the edge
        needed += 1
    while needed > 1 and false_alarm_upper_bound(0, needed - 1, confidence) <= budget:
        needed -= 1
    return needed


def budget_threshold(labels: np.ndarray, scores: np.ndarray, budget: float,
                     confidence: float) -> OperatingPoint:
    """The lowest cut whose false alarms among the validation normals keep the upper bound of the
    false-alarm rate within ``budget`` at ``confidence``, placed halfway between the highest normal
    it passes and the next score above. Where even no false alarm is not enough, the cut passes every
    normal and ``problem`` says how many normal images the budget needs."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float32)
    normal = np.sort(scores[~labels])[::-1]
    n = len(normal)
    if n == 0:
        raise ValueError("a false-alarm budget needs normal validation images")
    allowed = -1  # the most validation false alarms whose upper bound stays within the budget
    while allowed + 1 < n and false_alarm_upper_bound(allowed + 1, n, confidence) <= budget:
        allowed += 1
    words = f"false-alarm budget {budget:g} at {confidence:.0%} confidence on {n} normal validation images"
    problem = ""
    if allowed < 0:
        needed = normals_needed(budget, confidence)
        problem = (f"validation holds {n} normal images: a false-alarm budget of {budget:g} at"
                   f" {confidence:.0%} confidence needs at least {needed}")
        allowed = 0
    passed = normal[allowed]  # the (allowed+1)-th highest normal: at most `allowed` lie above it
    above = scores[scores > passed]
    threshold = _between(above.min(), passed) if len(above) else float(passed)
    return _point(labels, scores, threshold, f"{words} (at most {allowed} above it)", problem)


def recall_threshold(labels: np.ndarray, scores: np.ndarray, min_recall: float) -> OperatingPoint:
    """The highest threshold that flags at least ``min_recall`` of the validation defects."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float32)
    defects = np.sort(scores[labels])[::-1]
    if len(defects) == 0:
        raise ValueError("a minimum-recall rule needs defect validation images")
    flagged = max(1, math.ceil(min_recall * len(defects) - 1e-9))
    lowest_flagged = defects[flagged - 1]
    below = scores[scores < lowest_flagged]
    threshold = _between(lowest_flagged, below.max() if len(below) else None)
    rule = f"minimum recall {min_recall:g} on {len(defects)} defect validation images"
    return _point(labels, scores, threshold, rule)


def _point(labels: np.ndarray, scores: np.ndarray, threshold: float, rule: str,
           problem: str = "") -> OperatingPoint:
    """An operating point with the false-alarm rate and recall it gives on these validation scores."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float32)
    flagged = scores > np.float32(threshold)
    fpr = float(flagged[~labels].mean()) if (~labels).any() else math.nan
    recall = float(flagged[labels].mean()) if labels.any() else math.nan
    return OperatingPoint(threshold, rule, fpr, recall, problem)


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
    return _between(cut_scores[best], cut_scores[best + 1] if best + 1 < len(cut_scores) else None)


def _between(lowest_flagged: float, highest_unflagged: float | None) -> float:
    """A threshold that flags ``lowest_flagged`` and not ``highest_unflagged``, halfway between
    them, and separating them in the float32 the model stores thresholds in."""
    upper = np.float32(lowest_flagged)
    lower = np.float32(highest_unflagged) if highest_unflagged is not None else None
    threshold = np.float32((upper + lower) / 2) if lower is not None else upper
    if not (lower is None or lower < threshold) or not threshold < upper:
        threshold = np.nextafter(upper, np.float32(-np.inf))
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


def operating_point(labels: np.ndarray, scores: np.ndarray, rule: ThresholdParams) -> OperatingPoint:
    """The image threshold by the line's rule, with the validation rates it achieves."""
    labels = np.asarray(labels).astype(bool)
    if rule.rule == "false_alarm_budget":
        return budget_threshold(labels, scores, rule.false_alarm_budget, rule.confidence)
    if rule.rule == "min_recall" and not labels.any():
        point = budget_threshold(labels, scores, rule.false_alarm_budget, rule.confidence)
        problem = (f"validation holds no defect images: a minimum recall of {rule.min_recall:g} cannot be"
                   f" measured (threshold set by the {point.rule} instead)")
        return replace(point, problem=problem)
    if rule.rule == "min_recall":
        return recall_threshold(labels, scores, rule.min_recall)
    threshold, words = choose_threshold(labels, scores, rule.normal_quantile, "images")
    return _point(labels, scores, threshold, words)


def calibrate(image_labels: np.ndarray, image_scores: np.ndarray, pixel_labels: np.ndarray,
              pixel_scores: np.ndarray, all_pixel_scores: tuple[float, float],
              rule: ThresholdParams) -> Calibration:
    """Thresholds and normalisation of one model from its validation outputs.

    ``pixel_labels``/``pixel_scores``: pixels of the validation images with ground truth (normal
    images, whose masks are empty by definition, and defect images with a mask);
    ``all_pixel_scores``: (min, max) over every validation map.
    """
    point = operating_point(image_labels, image_scores, rule)
    pixel_threshold, pixel_rule = choose_threshold(pixel_labels, pixel_scores, rule.normal_quantile, "pixels")
    image_scores = np.asarray(image_scores, dtype=np.float64)
    return Calibration(
        image_threshold=point.threshold, image_rule=point.rule,
        pixel_threshold=pixel_threshold, pixel_rule=pixel_rule,
        image_min=float(image_scores.min()), image_max=float(image_scores.max()),
        pixel_min=float(all_pixel_scores[0]), pixel_max=float(all_pixel_scores[1]),
        validation_normal_fpr=point.validation_normal_fpr, validation_recall=point.validation_recall,
        unsupported=point.problem,
    )
