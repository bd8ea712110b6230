"""The audit trail of a product line's decisions, kept in MLflow.

Every decision is an event appended as a run of its own in the experiment ``padim/<line>/decisions``:
the gate's automatic verdict, ``promote``, ``rollback``, ``demote``, ``approve`` and ``reject``. Its
fields are the run's params, which MLflow never lets anyone change, so the record cannot be
overwritten; runs are inserted, never updated in place, so concurrent writers cannot lose one
another's events; and the trail shows in MLflow's UI. Version tags only summarise it.

An event is begun (run RUNNING) before the alias move it records and finished after it, in the
line's turn. The next writer of the line finds an event whose process died half-way and settles it:
finished if its alias move took effect, marked interrupted if not. So no move goes unrecorded and no
event claims a move that did not happen.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus

from ..data.validation import check_line_name

TAG = "padim.event."
PARAM_LIMIT = 6000  # MLflow's longest param value: longer text goes on in <name>.1, <name>.2, ...
FINISHED, RUNNING, KILLED = (RunStatus.to_string(status) for status in
                             (RunStatus.FINISHED, RunStatus.RUNNING, RunStatus.KILLED))


@dataclass(frozen=True)
class Event:
    """One decision about a line's versions: who, when, what moved, and why."""

    line: str
    action: str  # gate, promote, rollback, demote, approve, reject
    version: str  # the version decided on
    outcome: str  # champion, challenger, pending, rejected, rolled back, demoted
    champion_before: str  # the champion before ("" none)
    champion_after: str  # and after ("" none)
    reason: str
    by: str = field(default_factory=lambda: actor(""))
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    host: str = field(default_factory=socket.gethostname)
    gates: list[dict[str, object]] = field(default_factory=list)  # the gate checks behind it
    overridden: list[str] = field(default_factory=list)  # failed gates a promotion overrode
    links: dict[str, str] = field(default_factory=dict)  # MLflow runs: candidate, re-scored champion
    turn: int = 0  # the line lock's generation it was made in: orders events whatever the clocks
    status: str = FINISHED  # RUNNING: begun, its process may have died; KILLED: interrupted, no effect

    def moves(self) -> str:
        before, after = self.champion_before or "none", self.champion_after or "none"
        return f"@champion v{before} -> v{after}".replace("vnone", "none")


def actor(uri: str) -> str:
    """Who acts: the MLflow user on a tracking server (its basic-auth login), else the OS user."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if uri.startswith("http") and user:
        return user
    return getpass.getuser()


def decisions_experiment(line: str) -> str:
    return f"padim/{check_line_name(line)}/decisions"


class AuditTrail:
    """A line's events: append (begin, then finish or abandon) and read them back in order."""

    def __init__(self, client: MlflowClient, line: str, artifact_location: str | None = None) -> None:
        self.client, self.line = client, line
        self._location = artifact_location
        self._experiment_id: str | None = None

    def begin(self, event: Event) -> str:
        """Record ``event`` as begun; returns its run id (for :meth:`finish`). Its fields are logged
        in one batch: a run without them was cut short before the event was recorded."""
        fields = asdict(event)
        del fields["status"]
        params = []
        for name, value in fields.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            params += [Param(key, chunk) for key, chunk in _chunks(name, text)]
        tags = {f"{TAG}action": event.action, f"{TAG}version": event.version, f"{TAG}outcome": event.outcome,
                "mlflow.user": event.by}
        name = f"{event.action} v{event.version}"
        run = self.client.create_run(self._experiment(), run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def finish(self, run_id: str) -> None:
        """Mark the event done; refused if another writer settled it meanwhile (this one's turn was
        taken over while it stalled)."""
        status = self.client.get_run(run_id).info.status
        if status != RUNNING:
            raise RuntimeError(f"{self.line}: audit event {run_id} was settled as {status} by another writer,"
                               " whose turn this one's stalled process had lost")
        self.client.set_terminated(run_id, FINISHED)

    def abandon(self, run_id: str, why: str) -> None:
        self.client.set_tag(run_id, f"{TAG}interrupted", why)
        self.client.set_terminated(run_id, KILLED)

    def append(self, event: Event) -> str:
        """An event that moves no alias: begun and finished at once."""
        run_id = self.begin(event)
        self.finish(run_id)
        return run_id

    def events(self) -> list[Event]:
        """The line's events, oldest first (interrupted ones included, marked so)."""
        experiment = self.client.get_experiment_by_name(decisions_experiment(self.line))
        if experiment is None:
            return []
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
            runs += page
            token = page.token
            if not token:
                break
        events = [_event(run.data.params, run.info.status) for run in runs if "action" in run.data.params]
        return sorted(events, key=lambda event: (event.turn, event.at))

    def unsettled(self) -> list[tuple[str, Event | None]]:
        """Events begun by a writer that died before finishing them: (run id, the event, or None
        where it died before the event's fields were recorded)."""
        experiment = self.client.get_experiment_by_name(decisions_experiment(self.line))
        if experiment is None:
            return []
        found = self.client.search_runs([experiment.experiment_id], f"attributes.status = '{RUNNING}'")
        return [(run.info.run_id, _event(run.data.params, run.info.status) if "action" in run.data.params
                 else None) for run in found]

    def _experiment(self) -> str:
        if self._experiment_id is None:
            name = decisions_experiment(self.line)
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    self._experiment_id = self.client.create_experiment(name, self._location)
                except Exception:  # created meanwhile by another writer
                    experiment = self.client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
                    self._experiment_id = experiment.experiment_id
            else:
                self._experiment_id = experiment.experiment_id
        return self._experiment_id


def _chunks(name: str, text: str) -> list[tuple[str, str]]:
    """``text`` as params ``name``, ``name.1``, ... of at most PARAM_LIMIT characters."""
    pieces = [text[i : i + PARAM_LIMIT] for i in range(0, len(text), PARAM_LIMIT)] or [""]
    return [(name if index == 0 else f"{name}.{index}", piece) for index, piece in enumerate(pieces)]


def _event(params: dict[str, str], status: str) -> Event:
    def text(name: str) -> str:
        pieces, index = [params.get(name, "")], 1
        while f"{name}.{index}" in params:
            pieces.append(params[f"{name}.{index}"])
            index += 1
        return "".join(pieces)

    structured = {"gates", "overridden", "links", "turn"}
    values = {name: (json.loads(text(name) or "null") or None) if name in structured else text(name)
              for name in Event.__dataclass_fields__ if name != "status"}
    values = {name: value for name, value in values.items() if value is not None}
    return Event(**values, status=status)
