"""The Prefect events padim emits: one home for their names, resources and payloads.

Every event is about resource ``padim.line.<line>`` (label ``padim.line``: the line), so that a
trigger or automation can act per line (``for_each: [padim.line]``). Payloads name the line, the
version, the reason and a link where there is one:

- ``padim.data.committed``: a new data version of a line (``data add``, ``feedback``), with its
  commit and DVC md5: ``prefect.yaml``'s trigger retrains the line;
- ``padim.model.promoted``: a version became the line's champion (gates, promote or approve);
- ``padim.model.pending``: a version passed its gates and waits for approval;
- ``padim.retrain.failed``: a line's retrain stopped with an error;
- ``padim.line.drift``: the monitor judged a window drift (flows.monitor.flow); its resource's
  label ``padim.on_drift`` is the line's ``production.monitor.on_drift`` (notify or retrain), which
  ``prefect.yaml``'s drift trigger matches.

Events go to the Prefect API a flow runs against, or, outside a flow run, to the one
``PREFECT_API_URL`` names. A command run without a Prefect server (the embedded defaults) emits
nothing rather than start an ephemeral API whose automations and triggers would not run anyway.
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

DATA_COMMITTED = "padim.data.committed"
MODEL_PROMOTED = "padim.model.promoted"
MODEL_PENDING = "padim.model.pending"
RETRAIN_FAILED = "padim.retrain.failed"
LINE_DRIFT = "padim.line.drift"


def line_resource(line: str) -> dict[str, str]:
    """The Prefect event resource a line's events are about."""
    return {"prefect.resource.id": f"padim.line.{line}", "prefect.resource.name": line, "padim.line": line}


def emit(name: str, line: str, payload: dict[str, Any], labels: dict[str, str] | None = None) -> bool:
    """Emit event ``name`` about ``line`` (its resource carrying ``labels`` too, for triggers to
    match) with ``payload`` (which names the line too); whether it was sent (see the module
    docstring)."""
    in_a_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    if not in_a_run and not PREFECT_API_URL.value():
        return False
    resource = line_resource(line) | (labels or {})
    return emit_event(name, resource=resource, payload={"line": line} | payload) is not None
