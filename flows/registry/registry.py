"""The one module that writes to MLflow: runs, model versions, tags, aliases and the audit trail.

One registered model per product line, ``padim-<line>``. Every new version gets ``@challenger``;
``@champion`` moves only through a decision (the gate's verdict, ``promote``, ``rollback``, ``demote``,
``approve``), each appended to the line's audit trail (flows.registry.audit) before its single alias move
and finished after it, so a failure at any point leaves the previous champion in place and the
trail true. A version that passed its gates on a line that wants approval waits as ``@pending``.
Version tags summarise the trail: ``padim.gate`` (the gate's own verdict, never overwritten by a
hand), ``padim.decision`` and ``padim.reason`` (the latest decision), ``padim.previous_champion``.
A version without ``padim.decision`` was never fully decided, and a rerun decides it again.

Writers of one line take turns (:meth:`Registry.turn`, a lease kept in the tracking store by
flows.registry.lock), so the turn holds across threads, processes and machines that share the store, on
SQLite as on a server.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from ..config import LineParams
from ..data.folders import locked
from ..data.store import DataVersion
from ..data.validation import check_line_name
from ..events import MODEL_PENDING, MODEL_PROMOTED, emit
from ..model.trained import REFERENCE_ARTIFACT, TrainedModel
from ..output import without_expected_warnings
from .audit import FINISHED, AuditTrail, Event, actor
from .gates import DATA_ON_REMOTE, Decision
from .lineage import Lineage, RoleData, head_commit
from .lock import LineLock

CHAMPION, CHALLENGER, PENDING = "champion", "challenger", "pending"  # aliases, and decisions
ROLLED_BACK, DEMOTED, REJECTED = "rolled back", "demoted", "rejected"  # the other decisions
PASSED, FAILED = "passed", "failed"  # a version's padim.gate
TAG = "padim."
PACKAGES = ("padim-plugin", "anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow",
            "pyarrow", "prefect", "dvc")
# what loading and scoring a model imports; padim-plugin itself is installed from this project
SCORING_PACKAGES = ("anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow",
                    "pyarrow")  # pyarrow: the production score log
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
TUNING_TABLE = "tuning/grid.json"
STATISTICS_ARTIFACTS = "statistics"  # a run's kept statistics (flows.registry.statistics)
KEPT = "kept"  # a version's padim.statistics tag while its run holds them
log = logging.getLogger(__name__)


SQLITE_STORE = "mlflow.db"  # the embedded default's store, in the project folder


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / SQLITE_STORE}"


def model_name(line: str) -> str:
    """The registered model of a line; the name check keeps quotes and backquotes out of the
    registry's search filters, which embed it."""
    return f"padim-{check_line_name(line)}"


def experiment_name(line: str) -> str:
    """The MLflow experiment holding a line's runs (fits and tuning)."""
    return f"padim/{check_line_name(line)}"


class PickledModelError(ValueError):
    """A registered version whose pyfunc is a pickle: refused rather than loaded."""


@dataclass(frozen=True)
class Candidate:
    """A registered model version and the run that produced it."""

    version: str
    run_id: str
    decided: bool  # already gated before (a re-run that reused a cached fit)
    decision: str | None = None
    gate_failed: tuple[str, ...] = ()  # the gates it failed when it was gated


@dataclass(frozen=True)
class VersionSummary:
    """A version in one of the line's roles, with its operating point and its data."""

    role: str  # champion, challenger or pending, or several joined by "+"
    version: str
    data_md5: str
    data_rev: str
    metrics: dict[str, float]
    decision: str

    def describe(self) -> str:
        f1 = self.metrics.get("image_f1")
        return (f"v{self.version:<4} data {self.data_md5[:12]} (rev {self.data_rev[:12] or '?'})"
                f"  false alarms {rate_with_interval(self.metrics, 'test_normal_fpr') or 'n/a'}"
                f"  recall {rate_with_interval(self.metrics, 'image_recall') or 'n/a'}"
                f"  F1 {'n/a' if f1 is None else f'{f1:.3f}'}  [{self.decision or 'undecided'}]")


def rate_with_interval(metrics: dict[str, float], name: str) -> str:
    """``0.037 [0.00, 0.19]``: a rate with its 95% interval (flows.model.evaluate logs both); "" if absent."""
    if name not in metrics:
        return ""
    low, high = metrics.get(f"{name}_low"), metrics.get(f"{name}_high")
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{metrics[name]:.3f}{interval}"


@dataclass(frozen=True)
class LineStatus:
    line: str
    versions: list[VersionSummary]
    last: Event | None  # the latest decision


class Registry:
    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.uri = uri or tracking_uri(self.root)
        user_setting = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # for the fluent API (start_run, log_model)
        mlflow.set_registry_uri(self.uri)
        # set_tracking_uri also exports it; left there, it would pass for the user's setting and
        # send the next project's Registry in this process to this store
        if user_setting is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_setting
        if self.uri.startswith("sqlite:///"):
            open_sqlite_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reading -------------------------------------------------------------------------------
    def check_access(self) -> None:
        """Fail fast, naming MLflow, if the tracking server refuses these credentials (before any
        work is done that could not be registered)."""
        try:
            self.client.search_experiments(max_results=1)
        except MlflowException as error:
            if error.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                msg = (f"MLflow at {self.uri} refused the credentials ({error.error_code}): check"
                       " MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
                raise RuntimeError(msg) from None
            raise

    def champion(self, line: str) -> ModelVersion | None:
        return self.alias(line, CHAMPION)

    def challenger(self, line: str) -> ModelVersion | None:
        return self.alias(line, CHALLENGER)

    def alias(self, line: str, alias: str) -> ModelVersion | None:
        """The version the alias points to; None if the model or alias does not exist (any other
        error, an unreachable server say, is raised: it must never read as "no champion")."""
        try:
            return self.client.get_model_version_by_alias(model_name(line), alias)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def version(self, line: str, version: str) -> ModelVersion:
        try:
            return self.client.get_model_version(model_name(line), str(version))
        except MlflowException as error:
            raise KeyError(f"{model_name(line)} has no version {version}") from error

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def find_candidate(self, line: str, cache_key: str) -> Candidate | None:
        """The version registered for this fit (data, params, code), with its decision if it has one."""
        existing = self.find_by_cache_key(line, cache_key)
        if existing is None:
            return None
        decision = existing.tags.get(f"{TAG}decision")
        failed = tuple(json.loads(existing.tags.get(f"{TAG}gate.failed", "[]")))
        return Candidate(str(existing.version), existing.run_id, decision is not None, decision, failed)

    def find_by_cache_key(self, line: str, cache_key: str) -> ModelVersion | None:
        found = self.client.search_model_versions(
            f"name = '{model_name(line)}' and tags.`{TAG}cache_key` = '{cache_key}'"
        )
        return max(found, key=lambda v: int(v.version)) if found else None

    def load_model(self, line: str, version: str) -> Any:
        """The StreamingPadim inside a registered pyfunc (refused if the pyfunc is a pickle)."""
        self.require_data_only(line, version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name(line)}/{version}")
        return pyfunc.unwrap_python_model().model

    def require_data_only(self, line: str, version: str) -> None:
        """Raise PickledModelError if the version's pyfunc was logged as a pickled Python object
        (as padim-plugin did before its data-only format): loading it would run its code. Read
        from the version's MLmodel file, which loading itself would follow, not from a tag."""
        info = mlflow.models.get_model_info(f"models:/{model_name(line)}/{version}")
        if "python_model" in info.flavors.get("python_function", {}):
            msg = (f"{model_name(line)} v{version} is a pickled model (registered before the data-only"
                   " format); it is not loaded, since loading it would run its code")
            raise PickledModelError(msg)

    def run_link(self, run_id: str) -> str:
        if self.uri.startswith("http"):
            return self._run_page(run_id)
        return f"run {run_id} (mlflow ui --backend-store-uri {self.uri})"

    def artifact_link(self, run_id: str, path: str) -> str:
        """Where a person opens one of a run's artifacts: the server's UI, or the file."""
        if self.uri.startswith("http"):
            return f"{self._run_page(run_id)}/artifacts/{path}"
        return f"{self.client.get_run(run_id).info.artifact_uri.removeprefix('file://')}/{path}"

    def _run_page(self, run_id: str) -> str:
        experiment = self.client.get_run(run_id).info.experiment_id
        return f"{self.uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"

    def note_on_version(self, line: str, version: str, **notes: str) -> None:
        """Tag the version (``padim.<name>``) with what a later command needs to know."""
        self._tag(line, version, **notes)

    # -- writing -------------------------------------------------------------------------------
    def log_candidate(self, params: LineParams, data: DataVersion, trained: TrainedModel, lineage: Lineage,
                      code_version: str, version_key: str) -> Candidate:
        """Log a run (params with the validation calibration, metrics with the reasons any are
        missing, lineage as tags and a dataset input per role, figures, pyfunc model) and register
        it as ``@challenger``, known by ``version_key``. Idempotent: a fit already registered under
        that key is returned. The caller holds the line's turn, so a run of this fit still marked
        running was left by a killed process. The fit's report is logged as run tags and its kept
        statistics as the run's ``statistics/`` artifacts, so that a fit on another machine can
        continue from them."""
        line = params.name
        existing = self.find_candidate(line, version_key)
        if existing is not None:
            if not existing.decided:  # registered by a process that stopped before gating it
                self.client.set_registered_model_alias(model_name(line), CHALLENGER, existing.version)
            return existing
        self._end_abandoned_runs(line, version_key)
        tags = self._lineage_tags(data, version_key, code_version, lineage)
        statistics = Path(trained.statistics_path) if trained.statistics_path else None
        keeping = statistics is not None and statistics.is_dir()
        if "statistics_config" in trained.fit:
            tags[f"{TAG}statistics_config"] = trained.fit["statistics_config"]
        if keeping:
            tags[f"{TAG}statistics"] = KEPT
        run_name = f"{line}-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.log_params(params.flat() | trained.calibration)
            mlflow.log_metrics({k: v for k, v in trained.metrics.items() if np.isfinite(v)})
            mlflow.set_tags(tags | {"mlflow.source.git.commit": lineage.git_commit})
            mlflow.set_tags({f"{TAG}{name}": value for name, value in trained.fit.items()})
            for role in lineage.roles:
                mlflow.log_input(_dataset(data, lineage, role), context=role.role)
            if "fit.embedded" in trained.fit:
                mlflow.log_metric("fit_images_embedded", int(trained.fit["fit.embedded"]))
            mlflow.log_dict({"metrics": trained.metrics, "unavailable": trained.unavailable}, "metrics.json")
            if keeping:
                mlflow.log_artifacts(str(statistics), STATISTICS_ARTIFACTS)
            for figure in trained.figures.values():
                mlflow.log_artifact(figure, "figures")
            if trained.reference:
                mlflow.log_dict(trained.reference, REFERENCE_ARTIFACT)
            with without_expected_warnings():  # its warnings about type hints: see flows.output
                info = self._log_pyfunc(params, trained)
        self._registered_model(line)
        version = self.client.create_model_version(model_name(line), info.model_uri, tags=tags,
                                                   model_id=info.model_id)
        self.client.set_registered_model_alias(model_name(line), CHALLENGER, version.version)
        return Candidate(str(version.version), run.info.run_id, decided=False)

    def log_rescored(self, line: str, champion: ModelVersion, data: DataVersion, metrics: dict[str, float],
                     code_version: str) -> str:
        """Log the champion's metrics re-scored on ``data`` as a run of their own (found again, not
        logged twice, for the same champion, data and code); returns its run id."""
        key = f"v{champion.version}|{data.md5}|{code_version}"
        experiment_id = self._experiment(line)
        found = self.client.search_runs([experiment_id], f"tags.`{TAG}rescore` = '{key}'")
        if found:
            return found[0].info.run_id
        tags = {f"{TAG}kind": "champion re-scored", f"{TAG}rescore": key, f"{TAG}rescored_version":
                str(champion.version), f"{TAG}rescored_run": champion.run_id, f"{TAG}data_md5": data.md5,
                f"{TAG}data_rev": data.rev or "", f"{TAG}code_version": code_version}
        run_name = f"{line}-champion-v{champion.version}-on-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.set_tags(tags)
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        return run.info.run_id

    def log_tuning(self, line: str, data: DataVersion, grid: list[dict[str, Any]], winner: dict[str, Any],
                   scores: dict[str, float]) -> str:
        """Log a tuning run to the line's experiment: the grid as a table, the winner's options as
        params and its validation ``scores`` as metrics."""
        import pandas as pd

        run_name = f"{line}-tune-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.set_tags({f"{TAG}kind": "tuning", f"{TAG}data_md5": data.md5,
                             f"{TAG}data_rev": data.rev or "", f"{TAG}git_commit": head_commit(self.root)})
            mlflow.log_params({f"best.{key}": value for key, value in winner.items()})
            best = {f"best_{name}": value for name, value in scores.items()}
            mlflow.log_metrics({"grid_points": len(grid)} | best)
            mlflow.log_table(pd.DataFrame(grid), artifact_file=TUNING_TABLE)
        return run.info.run_id

    # -- decisions (each in the line's turn, each an event of the audit trail) ------------------
    @contextmanager
    def turn(self, line: str, purpose: str, timeout_s: float | None = None) -> Iterator[LineLock]:
        """The line's writer turn (:class:`flows.registry.lock.LineLock`); events left half-way by a writer
        that died are settled first (see flows.registry.audit)."""
        with LineLock(self.client, line, purpose, timeout_s) as lock:
            self._settle(line, lock)
            yield lock

    def record_decision(self, line: str, version: str, decision: Decision, promotion: str,
                        lock: LineLock, links: dict[str, str] | None = None) -> Event:
        """Record the gate's verdict on a new version: as champion if it passed and the line
        promotes automatically, as pending approval if it passed and the line wants approval, else
        as challenger. The caller holds the line's turn (``lock``). A verdict recorded already in this
        turn (a retried task) or by a process that died before summarising it on the version is
        completed, not recorded twice."""
        self._settle(line, lock)  # this task's earlier try, if it was cut short
        target = self.version(line, version)
        earlier = [event for event in self.trail(line).events()
                   if event.action == "gate" and event.version == str(version) and event.status == FINISHED]
        if earlier and (earlier[-1].turn == lock.generation or f"{TAG}decision" not in target.tags):
            self._summarise(line, earlier[-1])  # decided in this turn already, or cut short before the tags
            return earlier[-1]
        verdict = {"gate": PASSED if decision.promote else FAILED, "gate.reason": decision.reason,
                   "gate.failed": json.dumps(decision.failed())}
        self._tag(line, version, **verdict)
        before = self._champion_version(line)
        outcome = CHALLENGER
        if decision.promote:
            outcome = CHAMPION if promotion == "auto" else PENDING
        after = str(version) if outcome == CHAMPION else before
        event = Event(line, "gate", str(version), outcome, before, after, decision.reason, by=actor(self.uri),
                      gates=decision.as_records(), links=links or {})
        self._apply(event, lock)
        return event

    def promote(self, line: str, version: str, reason: str, override_gates: bool = False) -> Event:
        """Make ``version`` the champion by hand, in the line's turn. A version that failed its gates
        (or was never gated) needs ``override_gates``, and the event records which gates it
        overrode; a version whose data is not on the DVC remote is refused whatever is said."""
        self.version(line, version)  # fails clearly on an unknown version, before any write
        with self.turn(line, f"promote v{version}") as lock:
            target = self.version(line, version)
            gate = target.tags.get(f"{TAG}gate")
            failed = json.loads(target.tags.get(f"{TAG}gate.failed", "[]"))
            if DATA_ON_REMOTE in failed:
                msg = (f"{model_name(line)} v{version} was fitted on data that was not on the DVC remote:"
                       f" {target.tags.get(f'{TAG}gate.reason', '')}; push it, then run 'padim-mlops retrain"
                       f" {line}' to gate it again")
                raise ValueError(msg)
            overridden = failed if gate == FAILED else ([] if gate == PASSED else ["never gated"])
            if overridden and not override_gates:
                why = (f"failed its gates ({', '.join(failed)}): {target.tags.get(f'{TAG}gate.reason', '')}"
                       if gate == FAILED else "has not been gated")
                raise ValueError(f"{model_name(line)} v{version} {why}; give --override-gates to promote it"
                                 " anyway (the override is recorded)")
            before = self._champion_version(line)
            number = str(target.version)  # as the registry spells it ('02' is v2)
            event = Event(line, "promote", number, CHAMPION, before, number, reason, by=actor(self.uri),
                          overridden=overridden)
            self._apply(event, lock)
            return event

    def rollback(self, line: str, reason: str) -> Event:
        """Give ``@champion`` back to the version the champion replaced, in the line's turn."""
        with self.turn(line, "rollback") as lock:
            current = self._current_champion(line, "roll back")
            previous = current.tags.get(f"{TAG}previous_champion")
            if not previous:
                raise KeyError(f"{model_name(line)} v{current.version} replaced no earlier champion:"
                               f" 'padim-mlops demote {line} --reason ...' removes it")
            event = Event(line, "rollback", str(current.version), ROLLED_BACK, str(current.version), previous,
                          reason, by=actor(self.uri))
            self._apply(event, lock)
            return event

    def demote(self, line: str, reason: str) -> Event:
        """Remove ``@champion`` (the line then has none: scoring by alias fails until a promotion)."""
        with self.turn(line, "demote") as lock:
            current = self._current_champion(line, "demote")
            event = Event(line, "demote", str(current.version), DEMOTED, str(current.version), "", reason,
                          by=actor(self.uri))
            self._apply(event, lock)
            return event

    def approve(self, line: str, version: str, reason: str, by: str | None = None) -> Event:
        """Promote the version waiting for approval (it passed its gates); ``by``: who answered,
        where that is not this process's user (a reviewer in the Prefect UI)."""
        with self.turn(line, f"approve v{version}") as lock:
            self._require_pending(line, version)
            event = Event(line, "approve", str(version), CHAMPION, self._champion_version(line), str(version),
                          reason, by=by or actor(self.uri))
            self._apply(event, lock)
            return event

    def reject(self, line: str, version: str, reason: str, by: str | None = None) -> Event:
        """Refuse the version waiting for approval: it stays a challenger, recorded as rejected."""
        with self.turn(line, f"reject v{version}") as lock:
            self._require_pending(line, version)
            before = self._champion_version(line)
            event = Event(line, "reject", str(version), REJECTED, before, before, reason,
                          by=by or actor(self.uri))
            self._apply(event, lock)
            return event

    def status(self, line: str) -> LineStatus:
        """The line's champion, challenger and pending version, and its latest decision."""
        holders: dict[str, tuple[list[str], ModelVersion]] = {}  # a version may hold several roles
        for role in (CHAMPION, CHALLENGER, PENDING):
            found = self.alias(line, role)
            if found is not None:
                holders.setdefault(str(found.version), ([], found))[0].append(role)
        versions = [VersionSummary("+".join(roles), number, found.tags.get(f"{TAG}data_md5", ""),
                                   found.tags.get(f"{TAG}data_rev", ""), self.run_metrics(found.run_id),
                                   found.tags.get(f"{TAG}decision", ""))
                    for number, (roles, found) in holders.items()]
        events = [event for event in self.history(line) if event.status == FINISHED]
        return LineStatus(line, versions, events[-1] if events else None)

    def history(self, line: str) -> list[Event]:
        """The line's decisions, oldest first."""
        return self.trail(line).events()

    def trail(self, line: str) -> AuditTrail:
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.root / "mlartifacts" / line / "decisions").as_uri()
        return AuditTrail(self.client, line, location)

    def _apply(self, event: Event, lock: LineLock) -> None:
        """Begin the event, make its alias moves (each checked against the lock just before; the
        champion's move is the commit point), finish it, then summarise it on the version."""
        event = replace(event, turn=lock.generation)
        trail = self.trail(event.line)
        run_id = trail.begin(event)
        if event.champion_after != event.champion_before:
            if event.champion_after and event.action != "rollback":
                self._tag(event.line, event.champion_after, previous_champion=event.champion_before)
            lock.check()
            if event.champion_after:
                self.client.set_registered_model_alias(model_name(event.line), CHAMPION, event.champion_after)
            else:
                self.client.delete_registered_model_alias(model_name(event.line), CHAMPION)
        self._pending_as_left_by(event, lock)
        trail.finish(run_id)
        self._summarise(event.line, event)
        self._announce(event)

    def _announce(self, event: Event) -> None:
        """A new champion, or a version waiting for approval, as a Prefect event (flows.events)."""
        promoted = event.champion_after == event.version and event.champion_before != event.version
        if not promoted and event.outcome != PENDING:
            return
        emit(MODEL_PROMOTED if promoted else MODEL_PENDING, event.line, {
            "version": event.version, "action": event.action, "reason": event.reason, "by": event.by,
            "champion_before": event.champion_before,
            "link": self.run_link(self.version(event.line, event.version).run_id)})

    def _pending_as_left_by(self, event: Event, lock: LineLock) -> None:
        """``@pending`` as the event leaves it: on its version if it waits for approval, off it once
        decided. Idempotent, so settling an event cut short after its champion move completes it."""
        name, waiting = model_name(event.line), self.alias(event.line, PENDING)
        on_it = waiting is not None and str(waiting.version) == event.version
        if event.outcome == PENDING and not on_it:
            if waiting is not None:  # one version waits at a time
                self._tag(event.line, str(waiting.version), decision=CHALLENGER,
                          reason=f"superseded by v{event.version}, pending approval in its place")
            lock.check()
            self.client.set_registered_model_alias(name, PENDING, event.version)
        elif event.outcome != PENDING and on_it:
            lock.check()
            self.client.delete_registered_model_alias(name, PENDING)

    def _summarise(self, line: str, event: Event) -> None:
        """The version's tags as the latest event left it (the trail keeps every event)."""
        self._tag(line, event.version, decision=event.outcome, reason=event.reason, **{
            "decided_by": event.by, "decided_at": event.at, "decided_by_action": event.action})
        if event.action == "rollback" and event.champion_after:
            self._tag(line, event.champion_after, decision=CHAMPION, reason=f"restored: {event.reason}")

    def _settle(self, line: str, lock: LineLock) -> None:
        """Complete the events whose writer died after their champion move (or that move no
        champion), mark the others interrupted: the trail then says what the aliases say."""
        trail = self.trail(line)
        for run_id, event in trail.unsettled():
            if event is None:
                trail.abandon(run_id, "its process stopped before the event was recorded; nothing changed")
            elif self._champion_version(line) == event.champion_after:
                self._pending_as_left_by(event, lock)
                trail.finish(run_id)
                self._summarise(line, event)
            else:
                trail.abandon(run_id, "its process stopped before the alias moved; nothing changed")

    def _require_pending(self, line: str, version: str) -> None:
        self.version(line, version)
        pending = self.alias(line, PENDING)
        if pending is None or str(pending.version) != str(version):
            waiting = f"v{pending.version} is" if pending is not None else "no version is"
            raise ValueError(f"{model_name(line)} v{version} is not waiting for approval ({waiting})")

    def _is_pending(self, line: str, version: str) -> bool:
        pending = self.alias(line, PENDING)
        return pending is not None and str(pending.version) == str(version)

    def _current_champion(self, line: str, to_do: str) -> ModelVersion:
        current = self.champion(line)
        if current is None:
            raise KeyError(f"{model_name(line)} has no champion to {to_do}")
        return current

    def _champion_version(self, line: str) -> str:
        champion = self.champion(line)
        return str(champion.version) if champion is not None else ""

    def _end_abandoned_runs(self, line: str, cache_key: str) -> None:
        experiment = self.client.get_experiment_by_name(experiment_name(line))
        if experiment is None:
            return
        filter_string = f"tags.`{TAG}cache_key` = '{cache_key}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([experiment.experiment_id], filter_string):
            self.client.set_tag(run.info.run_id, f"{TAG}abandoned", "its process stopped before registering")
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    def _log_pyfunc(self, params: LineParams, trained: TrainedModel) -> Any:
        """The model as a pyfunc of the active run: models-from-code (a file, not a pickle) around
        the model artifact, with its pinned requirements, signature and an input example."""
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"model": trained.model_path},
            pip_requirements=_pip_requirements(),
            signature=_signature(),
            input_example=_example_images(params.data.image_size),
        )

    def _registered_model(self, line: str) -> None:
        try:
            self.client.create_registered_model(model_name(line))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _tag(self, line: str, version: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name(line), str(version), f"{TAG}{key}", value)

    def monitoring_experiment(self, line: str) -> str:
        """The id of ``padim/<line>/monitoring``, where each monitored window is a run."""
        return self._experiment(line, "monitoring")

    def _experiment(self, line: str, kind: str = "") -> str:
        """The line's experiment of fits (or of ``kind``: ``padim/<line>/<kind>``), made if need be;
        on the embedded store its artifacts lie in the project's ``mlartifacts/<line>[/<kind>]``."""
        name = f"{experiment_name(line)}/{kind}" if kind else experiment_name(line)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.root / "mlartifacts" / line / kind).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _lineage_tags(self, data: DataVersion, version_key: str, code_version: str,
                      lineage: Lineage) -> dict[str, str]:
        return {
            f"{TAG}code_version": code_version,
            f"{TAG}data_md5": data.md5,
            f"{TAG}data_rev": data.rev or "",
            f"{TAG}cache_key": version_key,
            f"{TAG}packages": json.dumps(_package_versions()),
            f"{TAG}registered_by": actor(self.uri),
        } | {f"{TAG}{name}": value for name, value in lineage.tags().items()}


@cache
def open_sqlite_store(uri: str) -> None:
    """Create a new SQLite store's tables one process at a time: MLflow creates them on first use,
    and two processes doing so at once collide ("Online migration expected to match one row")."""
    with locked(Path(f"{uri.removeprefix('sqlite:///')}.init.lock")):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def _pip_requirements() -> list[str]:
    """What scoring a registered model needs: padim-plugin's own dependencies, pinned as installed."""
    return [f"{name}=={version}" for name, version in _package_versions().items()
            if name in SCORING_PACKAGES]


def _example_images(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _signature():
    """Named outputs and the params a request may set; no input schema, since one cannot say
    "uint8 pixels or encoded images". The maps, only on request, are not in the outputs."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=None,  # pixels or encoded images: flows/pyfunc.py checks and decodes either
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1,), "pred_score"),
            TensorSpec(np.dtype(np.int64), (-1,), "pred_label"),
        ]),
        params=ParamSchema([ParamSpec("anomaly_map", "string", "none"),  # none, values or png
                            ParamSpec("map_size", "long", 0),  # longer side in px; 0: the image's
                            ParamSpec("source", "string", "")]),  # the caller, for the production log
    )


def _package_versions() -> dict[str, str]:
    from padim_plugin.artifact import package_versions

    return package_versions(*PACKAGES)


class DVCDatasetSource(DatasetSource):
    """Where a role's images lie: a DVC remote, the folder's path in the project and the revision."""

    def __init__(self, remote: str, path: str, rev: str) -> None:
        self.remote, self.path, self.rev = remote, path, rev

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        raise NotImplementedError("pull a data version with 'padim-mlops data pull LINE --rev REV'")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DVCDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, str]:
        return {"remote": self.remote, "path": self.path, "rev": self.rev}

    @classmethod
    def from_dict(cls, source_dict: dict[str, str]) -> DVCDatasetSource:
        return cls(source_dict["remote"], source_dict["path"], source_dict["rev"])


def _dataset(data: DataVersion, lineage: Lineage, role: RoleData) -> MetaDataset:
    """A role folder of the data version as an MLflow dataset: named, digested by its DVC md5."""
    source = DVCDatasetSource(lineage.remote_url, f"data/{data.line}/{role.role}", data.rev or "")
    return MetaDataset(source, name=f"{data.line}/{role.role}", digest=role.md5)
