"""Promotion gates: pure decisions from metrics, no side effects (flows.registry applies them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import GateParams


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: dict[str, float], champion: dict[str, float] | None, gates: GateParams,
           champion_version: str | None = None) -> Decision:
    """Promote only if every floor is met and no gated metric drops more than ``max_drop`` below
    the champion's, both measured on the same data version. NaN (undefined) fails a gate."""
    failures = []
    for metric, floor in sorted(gates.floors.items()):
        value = candidate.get(metric, math.nan)
        if not value >= floor:
            failures.append(f"{metric} {value:.4f} below floor {floor}")
    if champion is not None:
        for metric in sorted(gates.floors):
            ours, theirs = candidate.get(metric, math.nan), champion.get(metric, math.nan)
            if not ours >= theirs - gates.max_drop:
                failures.append(
                    f"{metric} {ours:.4f} is more than {gates.max_drop} below champion"
                    f" v{champion_version}'s {theirs:.4f} on the same data"
                )
    if failures:
        return Decision(False, "; ".join(failures))
    if champion is None:
        return Decision(True, "passes every floor; there was no champion")
    return Decision(
        True, f"passes every floor and is within {gates.max_drop} of champion v{champion_version}"
    )
