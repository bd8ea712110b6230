"""The events a test's Prefect API stored (the server writes them in batches: wait for them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prefect.client.orchestration import get_client


def events_about(line: str, name: str, where: Callable[[dict], bool] = lambda payload: True,
                 at_least: int = 0, wait_s: float = 30.0) -> list[dict]:
    """Event ``name`` about product line ``line`` (flows.events) whose payload is ``where``, oldest
    first, once there are ``at_least`` of them or after ``wait_s``."""
    async def read() -> list[dict]:
        async with get_client() as client:
            answer = await client._client.post("/events/filter", json={
                "filter": {"event": {"name": [name]}, "resource": {"id": [f"padim.line.{line}"]}}})
            events = sorted(answer.json()["events"], key=lambda event: event["occurred"])
            return [event for event in events if where(event["payload"])]

    deadline = time.monotonic() + wait_s
    while len(events := asyncio.run(read())) < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
    return events
