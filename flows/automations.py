"""``padim-mlops automations apply``: the Prefect automations of ``automations.yaml``, created on the
Prefect API the environment names, each calling the team's webhook.

The webhook is a Prefect Webhook block, ``padim-webhook`` (saved here with the URL given, or kept
as it is when none is given); an action's ``block_document_id: padim-webhook`` in the file names it.
An automation of the same name made earlier is replaced, so applying twice leaves one of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore
from prefect.settings import PREFECT_API_URL

WEBHOOK_BLOCK = "padim-webhook"
AUTOMATIONS = Path(__file__).resolve().parents[1] / "automations.yaml"


def read_automations(path: Path, block_id: str) -> list[AutomationCore]:
    """The file's automations, their webhook actions pointed at the block ``block_id``."""
    document = yaml.safe_load(path.read_text())
    specs: list[dict[str, Any]] = document["automations"]
    for spec in specs:
        for action in spec["actions"]:
            if action.get("block_document_id") == WEBHOOK_BLOCK:
                action["block_document_id"] = block_id
    return [AutomationCore.model_validate(spec) for spec in specs]


def apply_automations(webhook_url: str | None, path: Path = AUTOMATIONS) -> list[str]:
    """Save the webhook block (if a URL is given), then create the file's automations, replacing
    those of the same names; returns their names."""
    if not PREFECT_API_URL.value():
        raise ValueError("automations run on a Prefect server: set PREFECT_API_URL (the embedded,"
                         " ephemeral API runs none)")
    if webhook_url:
        Webhook(method="POST", url=webhook_url).save(WEBHOOK_BLOCK, overwrite=True)
    try:
        block = Webhook.load(WEBHOOK_BLOCK)
    except ValueError:
        raise ValueError(f"no Webhook block {WEBHOOK_BLOCK!r} on {PREFECT_API_URL.value()}: give"
                         " --webhook-url") from None
    automations = read_automations(path, str(block._block_document_id))
    with get_client(sync_client=True) as client:
        for automation in automations:
            for earlier in client.read_automations_by_name(automation.name):
                client.delete_automation(earlier.id)
            client.create_automation(automation)
    return [automation.name for automation in automations]
