"""Promotion gates: pure decisions from metrics that return their reasons (flows.registry.registry records
them).

A candidate is promoted only if nothing blocks it (an operating point its validation split cannot
support, a dirty tree, data missing from the remote: the callers say which), every floor and
ceiling holds, its test false-alarm rate stays within the line's budget plus a binomial allowance
for the size of its test split, and it is not worse than the champion by more than ``max_drop``
on any gated metric or operating-point metric (false-alarm rate, recall, F1), each in its own
direction, both measured on the same data version. Pixel floors apply only where the line has
masks: a line labelled per image is gated on its image metrics and its operating point, and the
decision says so. Nothing is ever compared with NaN: a gated metric the candidate lacks fails its
gate, with the reason it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binom

from ..config import OPERATING_POINT, GateParams

# gates named by the checks that callers find elsewhere (flows.registry.lineage, the operating point)
CLEAN_TREE = "committed params and code"
DATA_ON_REMOTE = "data on the DVC remote"
SUPPORTED_OPERATING_POINT = "operating point supported by validation"

@dataclass(frozen=True)
class Check:
    """One gate and its outcome, in words."""

    gate: str  # what was checked: "image_auroc >= 0.7", "no drop in image_recall", "ready"
    passed: bool
    detail: str  # the figures behind the outcome


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()

    def failed(self) -> list[str]:
        """The gates that failed, as their checks name them."""
        return [check.gate for check in self.checks if not check.passed]

    def as_records(self) -> list[dict[str, object]]:
        return [asdict(check) for check in self.checks]


def false_alarm_ceiling(budget: float, test_normals: int, allowance: float) -> float:
    """The highest test false-alarm rate a model within ``budget`` shows with probability
    ``allowance`` on ``test_normals`` images: the ``allowance`` quantile of Binomial(n, budget) / n."""
    return float(binom.ppf(allowance, test_normals, budget)) / test_normals


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GateParams,
           champion_version: str | None = None, unavailable: dict[str, str] | None = None,
           budget: float | None = None, blockers: Sequence[Check] = ()) -> Decision:
    """Gate ``candidate``'s metrics (and the champion's, re-scored on the same data) under ``gates``
    and the line's false-alarm ``budget``; ``blockers`` are failed checks found elsewhere."""
    unavailable = unavailable or {}
    checks = list(blockers)
    directions: dict[str, int] = dict(OPERATING_POINT)
    notes = []
    bounds = [(metric, value, 1) for metric, value in sorted(gates.floors.items())]
    skipped = {metric: value for metric, value in gates.pixel_floors.items()
               if metric not in candidate and metric in unavailable}
    if skipped:
        listed = ", ".join(f"{metric} >= {value:g}" for metric, value in sorted(skipped.items()))
        notes.append(f"labelled per image ({next(iter(unavailable[m] for m in skipped))}): gated on image"
                     f" metrics and the operating point, pixel floors not applied ({listed})")
    bounds += [(metric, value, 1) for metric, value in sorted(gates.pixel_floors.items())
               if metric not in skipped]
    bounds += [(metric, value, -1) for metric, value in sorted(gates.ceilings.items())]
    for metric, bound, direction in bounds:
        directions[metric] = direction
        checks.append(_bound(candidate, unavailable, metric, bound, direction))
    if budget is not None and gates.false_alarm_allowance is not None:
        checks.append(_false_alarm_ceiling(candidate, unavailable, budget, gates.false_alarm_allowance))
    if champion is not None:
        for metric, direction in sorted(directions.items()):
            theirs, ours = champion.get(metric), candidate.get(metric)
            if theirs is None:
                continue  # a champion evaluated without this metric: nothing to compare
            if ours is None:
                checks.append(Check(f"no drop in {metric}", False, f"{metric} is missing, though champion"
                                    f" v{champion_version} has it ({theirs:.4f}) on the same data"))
                continue
            worse_by = (theirs - ours) * direction
            detail = (f"{metric} {ours:.4f} against champion v{champion_version}'s {theirs:.4f} on the"
                      " same data")
            if worse_by > gates.max_drop:
                detail = (f"{metric} {ours:.4f} is worse than champion v{champion_version}'s {theirs:.4f} by"
                          f" more than {gates.max_drop} on the same data")
            checks.append(Check(f"no drop in {metric}", bool(worse_by <= gates.max_drop), detail))
    failures = [check.detail for check in checks if not check.passed]
    if failures:
        reason = "; ".join(failures)
    elif champion is None:
        reason = "passes every gate; there was no champion"
    else:
        reason = (f"passes every gate and is within {gates.max_drop} of champion v{champion_version} on every"
                  " gated and operating-point metric")
    return Decision(not failures, "; ".join([reason, *notes]), tuple(checks))


def _bound(candidate: dict[str, float], unavailable: dict[str, str], metric: str, bound: float,
           direction: int) -> Check:
    kind, sign = ("floor", ">=") if direction > 0 else ("ceiling", "<=")
    gate = f"{metric} {sign} {bound:g}"
    if metric not in candidate:
        why = unavailable.get(metric, "this line's evaluation does not log it")
        return Check(gate, False, f"{metric} is missing ({why}), so its {kind} {bound} cannot be met")
    value = candidate[metric]
    passed = bool(value >= bound if direction > 0 else value <= bound)
    detail = f"{metric} {value:.4f} {'below' if direction > 0 else 'above'} {kind} {bound}"
    return Check(gate, passed, detail if not passed else f"{metric} {value:.4f}")


def _false_alarm_ceiling(candidate: dict[str, float], unavailable: dict[str, str], budget: float,
                         allowance: float) -> Check:
    gate = "test_normal_fpr within the false-alarm budget"
    normals = int(candidate.get("test_normal_images", 0))
    if "test_normal_fpr" not in candidate or normals == 0:
        why = unavailable.get("test_normal_fpr", "the test split has no normal images")
        return Check(gate, False, f"test_normal_fpr is missing ({why}): false alarms cannot be checked")
    ceiling = false_alarm_ceiling(budget, normals, allowance)
    fpr = candidate["test_normal_fpr"]
    words = (f"ceiling {ceiling:.4f} (budget {budget:g} plus the binomial allowance at {allowance:.0%} for"
             f" {normals} test normal images)")
    if fpr > ceiling:
        return Check(gate, False, f"test_normal_fpr {fpr:.4f} above its {words}")
    return Check(gate, True, f"test_normal_fpr {fpr:.4f} within its {words}")
