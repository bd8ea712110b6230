"""Does a window of production still look like what the champion was validated on? (pure decisions
that return their reasons, as flows.registry.gates does)

The checks, each a test of "production is as the reference" with a p-value:

- **alarm rate**: the images flagged, against the highest false-alarm rate the champion's validation
  normals allow (their exact 95% upper bound, plus the defect rate the line expects), by an exact
  one-sided binomial test; the excess over the validation rate is reported;
- **normal scores**: the scores of the images the model passed against the validation normals it
  passed, by a two-sample Kolmogorov-Smirnov test (a shift that has not yet crossed the threshold);
- **input statistics**: each padim_plugin.image_statistics (size, brightness, contrast,
  sharpness) of the window against the training images', by the same test: a new camera, light or
  focus shows here before scores move.

The outcome is ``drift`` when a p-value, Bonferroni-corrected over the checks made, falls below
``drift_p``; ``warn`` below ``warn_p``; else ``ok``. The reference is one sample of the line (a few
hundred validation images), so a monitor fixed to it errs more often than the nominal rates say:
bench/monitoring.py measures how often unchanged real windows are judged warn or drift, and how
often each drift is caught. A window with fewer than ``min_images`` images gets no judgement
(``too few images``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest, ks_2samp

from padim_plugin.image_statistics import STATISTICS

from ..config import MonitorParams
from ..model.thresholds import false_alarm_upper_bound
from .reference import MonitoringReference

OK, WARN, DRIFT, TOO_FEW = "ok", "warn", "drift", "too few images"
ALARM_RATE, NORMAL_SCORES = "alarm rate", "normal scores"
MIN_SAMPLE = 5  # fewer values on either side: a distribution check is not made


@dataclass(frozen=True)
class Window:
    """What production gave in the window: one entry per scored image."""

    scores: np.ndarray  # normalised: the threshold sits at 0.5
    labels: np.ndarray  # 1 flagged
    statistics: dict[str, np.ndarray]  # NaN where the log has none (rows of older versions)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Check:
    name: str
    statistic: float  # the excess alarm rate, or the KS distance
    p_value: float
    detail: str  # the figures, in words


@dataclass(frozen=True)
class MonitorReport:
    outcome: str
    images: int
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the checks behind a warn or drift, in words

    def describe(self, line: str) -> str:
        reasons = "".join(f"\n  - {reason}" for reason in self.reasons)
        return f"{line}: {self.outcome} ({self.images} images){reasons}"

    def figures(self) -> dict[str, float]:
        """Every check's statistic and p-value, for logging as metrics."""
        slug = {check.name: check.name.replace(" ", "_") for check in self.checks}
        return {"images": float(self.images)} | {
            f"{slug[check.name]}_{part}": value for check in self.checks
            for part, value in (("statistic", check.statistic), ("p", check.p_value))}


def judge(window: Window, reference: MonitoringReference, settings: MonitorParams) -> MonitorReport:
    """The outcome of ``window`` against ``reference`` (see the module docstring)."""
    if len(window) < settings.min_images:
        return MonitorReport(TOO_FEW, len(window), reasons=[
            f"{len(window)} image(s) scored in the window, {settings.min_images} needed to judge"])
    checks = [check for check in (alarm_rate(window, reference, settings.expected_defect_rate),
                                  normal_scores(window, reference), *input_statistics(window, reference))
              if check is not None]
    corrected = {check.name: min(1.0, check.p_value * len(checks)) for check in checks}
    reasons = [f"{check.name}: {check.detail} (p = {corrected[check.name]:.2g}, corrected for"
               f" {len(checks)} checks)" for check in checks if corrected[check.name] < settings.warn_p]
    lowest = min(corrected.values())
    outcome = DRIFT if lowest < settings.drift_p else WARN if lowest < settings.warn_p else OK
    return MonitorReport(outcome, len(window), checks, reasons)


def alarm_rate(window: Window, reference: MonitoringReference, expected_defect_rate: float) -> Check | None:
    normals = len(reference.normal_scores)
    if not normals:
        return None
    validation_rate = reference.false_alarms / normals
    allowed = min(1.0, false_alarm_upper_bound(reference.false_alarms, normals, 0.95) + expected_defect_rate)
    flagged, images = int(window.labels.sum()), len(window)
    rate = flagged / images
    p_value = binomtest(flagged, images, allowed, alternative="greater").pvalue
    detail = (f"{flagged} of {images} flagged ({rate:.1%}); validation {validation_rate:.1%} of {normals}"
              f" normals, at most {allowed:.1%} expected")
    return Check(ALARM_RATE, rate - validation_rate, float(p_value), detail)


def normal_scores(window: Window, reference: MonitoringReference) -> Check | None:
    passed = window.scores[window.labels == 0]
    expected = np.asarray(reference.normal_scores)
    expected = expected[expected <= 0.5]
    if len(passed) < MIN_SAMPLE or len(expected) < MIN_SAMPLE:
        return None
    test = ks_2samp(passed, expected)
    detail = (f"median {np.median(passed):.3f} against {np.median(expected):.3f} on validation"
              f" (KS distance {test.statistic:.2f})")
    return Check(NORMAL_SCORES, float(test.statistic), float(test.pvalue), detail)


def input_statistics(window: Window, reference: MonitoringReference) -> list[Check | None]:
    return [_statistic_check(name, window.statistics[name], np.asarray(reference.training_statistics[name]))
            for name in STATISTICS]


def _statistic_check(name: str, values: np.ndarray, training: np.ndarray) -> Check | None:
    values = values[~np.isnan(values)]
    if len(values) < MIN_SAMPLE or len(training) < MIN_SAMPLE:
        return None
    test = ks_2samp(values, training)
    p_value = 1.0 if math.isnan(test.pvalue) else float(test.pvalue)
    detail = (f"median {np.median(values):.4g} against {np.median(training):.4g} in training"
              f" (KS distance {test.statistic:.2f})")
    return Check(name, float(test.statistic), p_value, detail)
