"""Waiting for a person's approval inside a Prefect flow run, and answering it from the command line.

A retrain of a line under ``promotion: approval`` leaves a passing candidate pending. Run by a
deployment, the flow may then pause for input (Prefect's ``pause_flow_run``) for up to a timeout:
the Prefect UI shows a form (approve, reason), and ``padim-mlops approve`` / ``reject`` answer it
too, after recording the decision in the registry. After the timeout the version stays pending and
the flow ends normally; approving later works the same, without a flow to resume. The flow run that
waits is noted on the version (``padim.approval.flow_run``), so the command knows what to resume.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect import get_client, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field

from .registry.registry import PENDING, TAG, Registry

WAITING_RUN = "approval.flow_run"  # version tag: the flow run paused for this version's approval


class ApprovalInput(RunInput):
    """The answer a reviewer gives in the Prefect UI (or ``padim-mlops approve/reject`` sends)."""

    approve: bool
    reason: str = Field(min_length=1)


def wait_for_approval(root: Path, line: str, version: str, timeout_s: int) -> tuple[str, str]:
    """Pause this flow run until a reviewer answers or ``timeout_s`` passes; returns the version's
    decision and reason afterwards (still pending after a timeout)."""
    registry = Registry(root)
    logger = get_run_logger()
    context = FlowRunContext.get()
    if context is not None:
        registry.note_on_version(line, version, **{WAITING_RUN: str(context.flow_run.id)})
    logger.info("%s: v%s waits for approval for up to %d s ('padim-mlops approve %s %s --reason ...')",
                line, version, timeout_s, line, version)
    try:
        answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=timeout_s,
                                poll_interval=max(1, min(10, timeout_s // 4)),
                                key=f"approve-{line}-v{version}")
    except FlowPauseTimeout:
        logger.warning("%s: no answer within %d s: v%s stays pending", line, timeout_s, version)
        if context is not None:  # a run that ends while paused is failed by Prefect: it ran as it should
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(context.flow_run.id, Running(), force=True)
        return _decision(registry, line, version)
    pending = registry.alias(line, PENDING)
    if pending is not None and str(pending.version) == str(version):  # answered in the UI, not recorded yet
        # Prefect's form says nothing of who filled it in: the record names where the answer came from
        by = f"the Prefect UI (flow run {context.flow_run.id if context else '?'})"
        if answer.approve:
            registry.approve(line, version, answer.reason, by=by)
        else:
            registry.reject(line, version, answer.reason, by=by)
    return _decision(registry, line, version)


def resume_waiting_flow(registry: Registry, line: str, version: str, approve: bool, reason: str) -> str:
    """Hand the answer to the flow run waiting for it, if one is; returns what happened, in words."""
    waiting = registry.version(line, version).tags.get(f"{TAG}{WAITING_RUN}")
    if not waiting:
        return ""
    answer = {"approve": approve, "reason": reason}
    try:
        resume_flow_run(UUID(waiting), run_input=answer)
    except Exception as error:  # the run timed out, ended or is on a server out of reach
        return f"the flow run {waiting} that waited for it was not resumed ({error})"
    return f"resumed the flow run {waiting} that waited for it"


def _decision(registry: Registry, line: str, version: str) -> tuple[str, str]:
    tags = registry.version(line, version).tags
    return tags.get(f"{TAG}decision", PENDING), tags.get(f"{TAG}reason", "")
