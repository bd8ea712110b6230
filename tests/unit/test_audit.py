"""The audit trail on a real MLflow store: every decision recorded once, and a writer that dies
half-way through one leaves the trail saying what the aliases say."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.registry.audit import Event, decisions_experiment
from flows.registry.gates import Check, Decision
from flows.registry.registry import Registry, model_name


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A store with line alpha: three versions, never gated (a fit's artifacts are not needed here)."""
    registry = Registry(tmp_path)
    run = registry.client.create_run(registry.client.create_experiment("scratch")).info.run_id
    registry.client.create_registered_model(model_name("alpha"))
    for _ in range(3):
        registry.client.create_model_version(model_name("alpha"), f"runs:/{run}/model", run)
    return registry


PASSING = Decision(True, "passes every gate; there was no champion",
                   (Check("image_auroc >= 0.7", True, "image_auroc 0.9000"),))


def begun(registry: Registry, event: Event) -> str:
    """An event begun as a writer that then died would leave it."""
    return registry.trail("alpha").begin(event)


def test_a_retried_decision_in_the_same_turn_is_recorded_once(registry: Registry,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.registry.audit import AuditTrail

    finish = AuditTrail.finish
    calls = []

    def fails_once(trail: AuditTrail, run_id: str) -> None:
        calls.append(run_id)
        if len(calls) == 1:
            raise ConnectionError("MLflow went away after the alias moved")
        finish(trail, run_id)

    monkeypatch.setattr(AuditTrail, "finish", fails_once)
    with registry.turn("alpha", "retrain") as lock:
        with pytest.raises(ConnectionError):
            registry.record_decision("alpha", "1", PASSING, "auto", lock)
        registry.record_decision("alpha", "1", PASSING, "auto", lock)  # the task's retry
    moves = [(e.action, e.version, e.champion_before, e.champion_after) for e in registry.history("alpha")]
    assert moves == [("gate", "1", "", "1")]
    assert registry.version("alpha", "1").tags["padim.decision"] == "champion"


def test_an_event_cut_short_before_its_alias_move_is_marked_interrupted(registry: Registry) -> None:
    begun(registry, Event("alpha", "promote", "2", "champion", "", "2", "died before the move"))
    with registry.turn("alpha", "next writer"):
        pass
    [event] = registry.history("alpha")
    assert event.status == "KILLED" and registry.champion("alpha") is None
    assert "padim.decision" not in registry.version("alpha", "2").tags


def test_an_event_cut_short_after_its_alias_move_is_completed(registry: Registry) -> None:
    registry.client.set_registered_model_alias(model_name("alpha"), "pending", "3")
    begun(registry, Event("alpha", "approve", "3", "champion", "", "3", "died after the move"))
    registry.client.set_registered_model_alias(model_name("alpha"), "champion", "3")
    with registry.turn("alpha", "next writer"):
        pass
    [event] = registry.history("alpha")
    assert event.status == "FINISHED" and registry.alias("alpha", "pending") is None  # its last step, redone
    assert registry.version("alpha", "3").tags["padim.decision"] == "champion"


def test_a_rejection_cut_short_is_completed_and_cannot_be_approved_after(registry: Registry) -> None:
    registry.client.set_registered_model_alias(model_name("alpha"), "pending", "2")
    begun(registry, Event("alpha", "reject", "2", "rejected", "", "", "stains missed"))
    with pytest.raises(ValueError, match="is not waiting for approval"):
        registry.approve("alpha", "2", "too late")
    assert registry.champion("alpha") is None
    assert registry.version("alpha", "2").tags["padim.decision"] == "rejected"


def test_a_run_cut_short_before_the_event_was_written_is_no_event(registry: Registry) -> None:
    experiment = registry.client.create_experiment(decisions_experiment("alpha"))
    run = registry.client.create_run(experiment)  # as begin() makes it, before its fields are logged
    with registry.turn("alpha", "next writer"):
        pass
    assert registry.client.get_run(run.info.run_id).info.status == "KILLED"
    assert registry.history("alpha") == []


def test_the_trail_is_in_the_order_of_the_turns_whatever_the_writers_clocks(registry: Registry) -> None:
    registry.promote("alpha", "1", "first", override_gates=True)
    late_clock = Event("alpha", "demote", "1", "demoted", "1", "", "a machine whose clock is a year behind",
                       at="2025-12-01T00:00:00.000000+00:00", turn=registry.history("alpha")[0].turn + 1)
    registry.trail("alpha").append(late_clock)
    assert [event.reason for event in registry.history("alpha")] == ["first", late_clock.reason]
