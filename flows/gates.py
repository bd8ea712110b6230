"""Promotion gates: pure decisions from metrics, no side effects (flows.registry applies them)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import GateParams


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GateParams,
           champion_version: str | None = None, unavailable: dict[str, str] | None = None) -> Decision:
    """Promote only if every floor (metric >= value) and ceiling (metric <= value) holds and no
    gated metric is worse than the champion's by more than ``max_drop``, both measured on the same
    data version. A gated metric the candidate lacks fails its gate, the reason saying why it is
    missing (``unavailable``); nothing is ever compared with NaN."""
    unavailable = unavailable or {}
    failures = []
    bounds = [(metric, value, True) for metric, value in sorted(gates.floors.items())]
    bounds += [(metric, value, False) for metric, value in sorted(gates.ceilings.items())]
    for metric, bound, is_floor in bounds:
        if metric not in candidate:
            why = unavailable.get(metric, "this line's evaluation does not log it")
            failures.append(f"{metric} is missing ({why}), so its {'floor' if is_floor else 'ceiling'}"
                            f" {bound} cannot be met")
            continue
        value = candidate[metric]
        if is_floor and value < bound:
            failures.append(f"{metric} {value:.4f} below floor {bound}")
        if not is_floor and value > bound:
            failures.append(f"{metric} {value:.4f} above ceiling {bound}")
        theirs = (champion or {}).get(metric)
        if theirs is None:
            continue  # no champion, or one evaluated without this metric: nothing to compare
        worse_by = theirs - value if is_floor else value - theirs
        if worse_by > gates.max_drop:
            failures.append(
                f"{metric} {value:.4f} is worse than champion v{champion_version}'s {theirs:.4f} by"
                f" more than {gates.max_drop} on the same data"
            )
    if failures:
        return Decision(False, "; ".join(failures))
    if champion is None:
        return Decision(True, "passes every gate; there was no champion")
    return Decision(True, f"passes every gate and is within {gates.max_drop} of champion v{champion_version}")
