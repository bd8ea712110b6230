"""Operating points and the gates that see them: pure rules against brute force and exact binomials."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flows.config import GateParams, ThresholdParams
from flows.model.thresholds import (
    budget_threshold,
    f1_optimal_threshold,
    false_alarm_upper_bound,
    normals_needed,
    operating_point,
    proportion_interval,
    recall_threshold,
)
from flows.registry.gates import decide, false_alarm_ceiling


def binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def bisect(predicate, low: float = 0.0, high: float = 1.0) -> float:
    """The p in [low, high] where ``predicate`` turns from True to False."""
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if predicate(middle) else (low, middle)
    return (low + high) / 2


def exact_upper_bound(k: int, n: int, confidence: float) -> float:
    """Clopper-Pearson's upper bound from its definition: P(X <= k | n, p) = 1 - confidence."""
    return 1.0 if k >= n else bisect(lambda p: binomial_cdf(k, n, p) > 1 - confidence)


@pytest.mark.parametrize("seed", range(12))
def test_the_budget_threshold_flags_the_fewest_normals_whose_exact_bound_stays_within_the_budget(
        seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(30, 300)), int(rng.integers(0, 40))
    labels = np.r_[np.zeros(n), np.ones(m)].astype(bool)
    scores = np.round(rng.normal(size=n + m) + 1.5 * labels, 1).astype(np.float32)  # rounded: many ties
    budget, confidence = float(rng.uniform(0.02, 0.2)), float(rng.choice([0.8, 0.9, 0.95]))
    normal = scores[~labels]
    valid = [t for t in np.unique(normal)
             if exact_upper_bound(int((normal > t).sum()), n, confidence) <= budget + 1e-9]
    point = budget_threshold(labels, scores, budget, confidence)
    threshold = np.float32(point.threshold)
    lowest = min(valid) if valid else normal.max()  # the lowest cut on a score within the budget
    assert (normal > threshold).sum() == (normal > lowest).sum()  # the same false alarms ...
    higher = scores[scores > lowest]
    assert lowest < threshold < higher.min() if len(higher) else threshold == lowest  # ... cut halfway
    assert bool(point.problem) == (not valid) and ("needs at least" in point.problem or valid)
    assert point.validation_normal_fpr == pytest.approx(float((normal > threshold).mean()))


@pytest.mark.parametrize(("k", "n", "confidence"),
                         [(0, 45, 0.9), (1, 77, 0.9), (3, 60, 0.95), (10, 200, 0.8)])
def test_the_upper_bound_is_clopper_pearsons(k: int, n: int, confidence: float) -> None:
    assert false_alarm_upper_bound(k, n, confidence) == pytest.approx(exact_upper_bound(k, n, confidence),
                                                                      abs=1e-9)


def test_too_few_validation_normals_are_named_with_how_many_it_would_take() -> None:
    assert normals_needed(0.05, 0.9) == 45  # 1 - 0.1 ** (1 / 45) = 0.0499 <= 0.05 < 0.0510 at 44
    assert exact_upper_bound(0, 45, 0.9) <= 0.05 < exact_upper_bound(0, 44, 0.9)
    point = budget_threshold(np.zeros(10), np.arange(10, dtype=np.float32), 0.05, 0.9)
    assert point.problem == ("validation holds 10 normal images: a false-alarm budget of 0.05 at 90%"
                             " confidence needs at least 45")


@pytest.mark.parametrize("seed", range(6))
def test_the_recall_threshold_is_the_highest_that_flags_the_minimum_recall(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120).astype(bool)
    scores = np.round(rng.normal(size=120) + 1.5 * labels, 1).astype(np.float32)
    point = recall_threshold(labels, scores, 0.8)

    def recall(threshold: float) -> float:
        return float((scores[labels] > threshold).mean())

    assert recall(np.float32(point.threshold)) >= 0.8
    higher = [t for t in np.unique(scores) if t >= point.threshold]  # any cut above flags fewer defects
    assert all(recall(t) < 0.8 for t in higher)


def test_the_rule_of_the_line_is_used_and_its_validation_rates_reported() -> None:
    labels = np.r_[np.zeros(100), np.ones(20)].astype(bool)
    scores = np.r_[np.linspace(0, 1, 100), np.linspace(0.9, 2, 20)].astype(np.float32)
    budget = operating_point(labels, scores, ThresholdParams(false_alarm_budget=0.05, confidence=0.9))
    false_alarms = round(budget.validation_normal_fpr * 100)
    assert exact_upper_bound(false_alarms, 100, 0.9) <= 0.05 < exact_upper_bound(false_alarms + 1, 100, 0.9)
    assert budget.rule.startswith("false-alarm budget 0.05 at 90% confidence on 100 normal")
    recall = operating_point(labels, scores, ThresholdParams(rule="min_recall", min_recall=1.0))
    assert recall.validation_recall == 1.0 and recall.validation_normal_fpr > 0  # 0.9 < 1.0 overlap
    f1 = operating_point(labels, scores, ThresholdParams(rule="f1"))
    assert f1.threshold == f1_optimal_threshold(labels, scores) and f1.rule.startswith("F1-optimal")


@pytest.mark.parametrize(("hits", "trials"), [(0, 20), (3, 40), (12, 12), (7, 30)])
def test_the_confidence_interval_is_the_exact_two_sided_one(hits: int, trials: int) -> None:
    low, high = proportion_interval(hits, trials, 0.95)
    if hits:  # P(X >= hits | low) = 2.5%
        assert 1 - binomial_cdf(hits - 1, trials, low) == pytest.approx(0.025, abs=1e-6)
    else:
        assert low == 0
    if hits < trials:  # P(X <= hits | high) = 2.5%
        assert binomial_cdf(hits, trials, high) == pytest.approx(0.025, abs=1e-6)
    else:
        assert high == 1


def test_the_false_alarm_ceiling_is_the_binomial_quantile_of_the_budget() -> None:
    # Binomial(40, 0.05): P(X <= 3) = 0.862, P(X <= 4) = 0.952, so 4 false alarms in 40 are allowed
    assert binomial_cdf(3, 40, 0.05) < 0.95 <= binomial_cdf(4, 40, 0.05)
    assert false_alarm_ceiling(0.05, 40, 0.95) == 4 / 40


GATES = GateParams(floors={"image_auroc": 0.7, "image_recall": 0.5}, pixel_floors={"pixel_auroc": 0.7})
CHAMPION = {"image_auroc": 0.95, "test_normal_fpr": 0.125, "image_recall": 0.8, "image_f1": 0.85,
            "pixel_auroc": 0.9, "test_normal_images": 40}


def test_a_candidate_whose_false_alarms_rise_while_its_auroc_holds_is_blocked() -> None:
    candidate = CHAMPION | {"test_normal_fpr": 0.25, "image_recall": 0.85, "image_f1": 0.8}
    decision = decide(candidate, CHAMPION, GATES, "1", budget=None)
    assert not decision.promote and decision.failed() == ["no drop in image_f1", "no drop in test_normal_fpr"]
    assert "test_normal_fpr 0.2500 is worse than champion v1's 0.1250" in decision.reason
    assert "no drop in test_normal_fpr" in decision.failed() and "no drop in image_f1" in decision.failed()
    assert "no drop in image_auroc" not in decision.failed()


def test_the_test_false_alarm_rate_above_budget_plus_allowance_is_blocked() -> None:
    candidate = CHAMPION | {"test_normal_fpr": 5 / 40}  # 5 > 4 allowed of 40 at a 0.05 budget
    decision = decide(candidate, None, GATES, budget=0.05)
    assert decision.failed() == ["test_normal_fpr within the false-alarm budget"]
    assert "above its ceiling 0.1000 (budget 0.05 plus the binomial allowance at 95% for 40" in (
        decision.reason)
    assert decide(CHAMPION | {"test_normal_fpr": 4 / 40}, None, GATES, budget=0.05).promote


def test_pixel_floors_apply_only_where_the_line_has_masks_and_the_decision_says_so() -> None:
    per_image = {name: value for name, value in CHAMPION.items() if name != "pixel_auroc"}
    why = {"pixel_auroc": "no test defect image has a mask: the line is labelled per image"}
    decision = decide(per_image | {"test_normal_fpr": 0.0}, None, GATES, unavailable=why, budget=0.05)
    assert decision.promote and "pixel floors not applied (pixel_auroc >= 0.7)" in decision.reason
    own = GateParams(floors={"pixel_auroc": 0.7})  # a line's own floor stays as strict as written
    strict = decide(per_image, None, own, unavailable=why)
    assert not strict.promote and strict.reason.startswith("pixel_auroc is missing (no test defect image")
