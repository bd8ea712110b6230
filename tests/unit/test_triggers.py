"""prefect.yaml's triggers on padim's events, judged by the Prefect server's own trigger logic."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.server.events.schemas.automations import EventTrigger
from prefect.server.events.schemas.events import ReceivedEvent

from flows.events import DATA_COMMITTED, LINE_DRIFT, line_resource

from ..projects import REPOSITORY

SERVER_FIELDS = ("match", "match_related", "after", "expect", "for_each", "posture", "threshold", "within")


def retrain_triggers() -> list[EventTrigger]:
    """The triggers of the deployment retrain-product-line, as the server evaluates them."""
    deployments = yaml.safe_load((REPOSITORY / "prefect.yaml").read_text())["deployments"]
    specs = next(d for d in deployments if d["name"] == "retrain-product-line")["triggers"]
    parsed = [DeploymentEventTrigger.model_validate(spec) for spec in specs]
    return [EventTrigger.model_validate(trigger.model_dump(mode="json", include=set(SERVER_FIELDS)))
            for trigger in parsed]


def event(name: str, labels: dict[str, str] | None = None) -> ReceivedEvent:
    resource = line_resource("tiles") | (labels or {})
    return ReceivedEvent(occurred=datetime.now(UTC), event=name, resource=resource, id=uuid4())


def test_a_data_commit_of_a_line_is_covered_by_a_retrain_trigger() -> None:
    assert [trigger.covers(event(DATA_COMMITTED)) for trigger in retrain_triggers()] == [True, False]


@pytest.mark.parametrize(("on_drift", "retrains"), [("retrain", True), ("notify", False)])
def test_a_drift_retrains_only_a_line_whose_on_drift_is_retrain(on_drift: str, retrains: bool) -> None:
    drift = event(LINE_DRIFT, {"padim.on_drift": on_drift})
    assert any(trigger.covers(drift) for trigger in retrain_triggers()) is retrains
