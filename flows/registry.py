"""The one module that writes to MLflow: runs, model versions, tags and the champion alias.

One registered model per product line, ``padim-<line>``. Every new version gets ``@challenger``;
``@champion`` moves only through :meth:`Registry.promote` / :meth:`Registry.rollback`, whose tags
are written first and whose single alias move comes last, so a failure at any point leaves the
previous champion in place; the version's ``padim.decision`` tag is written after the move, so a
version without it was never fully decided and a rerun decides it again.

Writers of one line take turns through :class:`LineLock`, a lease kept in the registry itself
(a registered model ``padim-<line>.lock-<generation>``), so the turn holds across threads,
processes and machines that share the store, on SQLite as on a server.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from .config import LineParams
from .data import DataVersion
from .folders import locked
from .validation import check_line_name

if TYPE_CHECKING:  # the store is handed in: it writes the files, this module only MLflow
    from .incremental import StatisticsStore

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "padim."
PACKAGES = ("padim-plugin", "anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow",
            "prefect", "dvc")
# what loading and scoring a model imports; padim-plugin itself is installed from this project
SCORING_PACKAGES = ("anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow")
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
TUNING_TABLE = "tuning/grid.json"
STATISTICS_ARTIFACTS = "statistics"  # a run's kept statistics (flows.incremental)
KEPT = "kept"  # a version's padim.statistics tag while its run holds them
LOCK_TTL_S = 120.0  # a lock not renewed for this long was abandoned (its holder died elsewhere)
LOCK_POLL_S = 0.5
# creating a lock generation failed because another writer got there first (or cleaned it up
# meanwhile), or SQLite was busy: look again rather than fail the retrain
CLAIM_LOST = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "TEMPORARILY_UNAVAILABLE")
_HELD_HERE: set[str] = set()  # lock generations this process holds now (any thread)
_CLAIMING = threading.Lock()  # makes creating a lock and noting it in _HELD_HERE one step
log = logging.getLogger(__name__)


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


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


class Registry:
    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.uri = uri or tracking_uri(self.root)
        user_setting = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)  # for the fluent API (start_run, log_model, register_model)
        mlflow.set_registry_uri(self.uri)
        # set_tracking_uri also exports it; left there, it would pass for the user's setting and
        # send the next project's Registry in this process to this store
        if user_setting is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_setting
        if self.uri.startswith("sqlite:///"):
            _open_sqlite_store(self.uri)
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
        return Candidate(str(existing.version), existing.run_id, decision is not None, decision)

    def line_lock(self, line: str, purpose: str, timeout_s: float | None = None) -> LineLock:
        """The line's writer turn (see :class:`LineLock`); ``with registry.line_lock(...):``."""
        return LineLock(self.client, line, purpose, timeout_s)

    def find_by_cache_key(self, line: str, cache_key: str) -> ModelVersion | None:
        found = self.client.search_model_versions(
            f"name = '{model_name(line)}' and tags.`{TAG}cache_key` = '{cache_key}'"
        )
        return max(found, key=lambda v: int(v.version)) if found else None

    def load_model(self, line: str, version: str) -> Any:  # noqa: ANN401
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
        run = self.client.get_run(run_id)
        if self.uri.startswith("http"):
            return f"{self.uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        return f"run {run_id} (mlflow ui --backend-store-uri {self.uri})"

    # -- writing -------------------------------------------------------------------------------
    def log_candidate(
        self,
        params: LineParams,
        data: DataVersion,
        metrics: dict[str, float],
        unavailable: dict[str, str],
        calibration: dict[str, float | str],
        model_path: Path,
        figures: dict[str, Path],
        cache_key: str,
        code_version: str,
        fit: dict[str, str] | None = None,
        statistics: Path | None = None,
    ) -> Candidate:
        """Log a run (params with the validation calibration, metrics with the reasons any are
        missing, lineage tags, figures, pyfunc model) and register it as ``@challenger``.
        Idempotent: a fit already registered under ``cache_key`` is returned. The caller holds the
        line's lock, so a run of this fit still marked running was left by a killed process.
        ``fit`` (flows.incremental.FitReport's tags and the statistics config) is logged as run
        tags, ``statistics`` (the fit's kept statistics) as the run's ``statistics/`` artifacts, so
        that a fit on another machine can continue from them."""
        line = params.name
        existing = self.find_candidate(line, cache_key)
        if existing is not None:
            if not existing.decided:  # registered by a process that stopped before gating it
                self.client.set_registered_model_alias(model_name(line), CHALLENGER, existing.version)
            return existing
        self._end_abandoned_runs(line, cache_key)
        tags = self._lineage_tags(data, cache_key, code_version)
        fit = fit or {}
        keeping = statistics is not None and statistics.is_dir()
        if "statistics_config" in fit:
            tags[f"{TAG}statistics_config"] = fit["statistics_config"]
        if keeping:
            tags[f"{TAG}statistics"] = KEPT
        run_name = f"{line}-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.log_params(params.flat() | calibration)
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            mlflow.set_tags(tags)
            mlflow.set_tags({f"{TAG}{name}": value for name, value in fit.items()})
            if "fit.embedded" in fit:
                mlflow.log_metric("fit_images_embedded", int(fit["fit.embedded"]))
            mlflow.log_dict({"metrics": metrics, "unavailable": unavailable}, "metrics.json")
            if keeping:
                mlflow.log_artifacts(str(statistics), STATISTICS_ARTIFACTS)
            for figure in figures.values():
                mlflow.log_artifact(str(figure), "figures")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),  # models-from-code: a file, not a pickle
                artifacts={"model": str(model_path)},
                pip_requirements=_pip_requirements(),
                signature=_signature(),
                input_example=_example_images(params.data.image_size),
            )
        version = mlflow.register_model(info.model_uri, model_name(line), tags=tags)
        self.client.set_registered_model_alias(model_name(line), CHALLENGER, version.version)
        return Candidate(str(version.version), run.info.run_id, decided=False)

    def fetch_statistics(self, line: str, config: str, store: StatisticsStore) -> list[str]:
        """Download into ``store`` the kept statistics of the line's champion and latest version
        that have this statistics config and that ``store`` lacks (fitted on another machine);
        returns their cache keys."""
        fetched = []
        for version in self._statistics_behind(line):
            key = version.tags.get(f"{TAG}cache_key", "")
            if (version.tags.get(f"{TAG}statistics") != KEPT or store.get(key) is not None
                    or version.tags.get(f"{TAG}statistics_config") != config):
                continue
            store.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=store.root) as folder:
                try:
                    path = mlflow.artifacts.download_artifacts(run_id=version.run_id, dst_path=folder,
                                                               artifact_path=STATISTICS_ARTIFACTS,
                                                               tracking_uri=self.uri)
                except (MlflowException, OSError) as error:
                    log.warning("%s v%s: its kept statistics cannot be downloaded: %s", line, version.version,
                                error)
                    continue
                store.adopt(key, Path(path))
                fetched.append(key)
        return fetched

    def collect_statistics(self, line: str, store: StatisticsStore) -> int:
        """Keep statistics only behind the line's champion and latest version: the others are
        deleted from ``store`` and from their runs' artifacts (their versions tagged so). Returns
        the bytes freed in ``store``."""
        behind = self._statistics_behind(line)
        freed = store.collect_garbage(line, {version.tags.get(f"{TAG}cache_key", "") for version in behind})
        keep = {str(version.version) for version in behind}
        kept = self.client.search_model_versions(
            f"name = '{model_name(line)}' and tags.`{TAG}statistics` = '{KEPT}'")
        for version in kept:
            if str(version.version) in keep:
                continue
            artifact_uri = self.client.get_run(version.run_id).info.artifact_uri
            try:
                get_artifact_repository(artifact_uri).delete_artifacts(STATISTICS_ARTIFACTS)
            except (MlflowException, OSError) as error:
                log.warning("%s v%s: its kept statistics cannot be deleted: %s", line, version.version, error)
                continue
            self._tag(line, str(version.version), statistics="deleted")
        return freed

    def _statistics_behind(self, line: str) -> list[ModelVersion]:
        """The line's champion and latest version (the fits a next fit would continue from)."""
        found = self.client.search_model_versions(f"name = '{model_name(line)}'")
        latest = max(found, key=lambda version: int(version.version), default=None)
        champion = self.champion(line) if found else None
        return list({str(v.version): v for v in (champion, latest) if v is not None}.values())

    def log_tuning(self, line: str, data: DataVersion, grid: list[dict[str, Any]], winner: dict[str, Any],
                   scores: dict[str, float]) -> str:
        """Log a tuning run to the line's experiment: the grid as a table, the winner's options as
        params and its validation ``scores`` as metrics."""
        import pandas as pd

        run_name = f"{line}-tune-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.set_tags({f"{TAG}kind": "tuning", f"{TAG}data_md5": data.md5,
                             f"{TAG}data_rev": data.rev or "", f"{TAG}git_commit": _git_commit(self.root)})
            mlflow.log_params({f"best.{key}": value for key, value in winner.items()})
            best = {f"best_{name}": value for name, value in scores.items()}
            mlflow.log_metrics({"grid_points": len(grid)} | best)
            mlflow.log_table(pd.DataFrame(grid), artifact_file=TUNING_TABLE)
        return run.info.run_id

    def record_decision(self, line: str, version: str, promote: bool, reason: str) -> None:
        """Tag the gate's verdict on the version; move ``@champion`` to it only if it passed. The
        caller holds the line's lock (the retrain flow does)."""
        if promote:
            self._promote(line, version, reason)
        else:
            self._tag(line, version, reason=reason, decision=CHALLENGER)

    def promote(self, line: str, version: str, reason: str) -> None:
        """Make ``version`` the champion, in the line's turn."""
        self.version(line, version)  # fails clearly on an unknown version, before any write
        with self.line_lock(line, f"promote v{version}") as lock:
            self._promote(line, version, reason, lock)

    def rollback(self, line: str) -> str:
        """Give ``@champion`` back to the version it replaced, in the line's turn; returns that version."""
        with self.line_lock(line, "rollback") as lock:
            current = self.champion(line)
            if current is None:
                raise KeyError(f"{model_name(line)} has no champion to roll back")
            previous = current.tags.get(f"{TAG}previous_champion")
            if not previous:
                raise KeyError(f"{model_name(line)} v{current.version} replaced no earlier champion")
            self._tag(line, str(current.version), reason=f"rolled back to v{previous}",
                      decision="rolled back")
            lock.check()
            self.client.set_registered_model_alias(model_name(line), CHAMPION, previous)
            return previous

    def _promote(self, line: str, version: str, reason: str, lock: LineLock | None = None) -> None:
        """Tag the champion it replaces, move the alias (the commit point), then tag the decision:
        rerun after a crash anywhere in between, it completes the same promotion. The caller holds
        the line's lock (``lock``, checked just before the move, or the retrain flow's)."""
        current = self.champion(line)
        if current is None or str(current.version) != str(version):
            previous = str(current.version) if current is not None else ""
            self._tag(line, version, reason=reason, previous_champion=previous)
            if lock is not None:
                lock.check()
            self.client.set_registered_model_alias(model_name(line), CHAMPION, str(version))
        self._tag(line, version, reason=reason, decision=CHAMPION)

    def _end_abandoned_runs(self, line: str, cache_key: str) -> None:
        experiment = self.client.get_experiment_by_name(experiment_name(line))
        if experiment is None:
            return
        filter_string = f"tags.`{TAG}cache_key` = '{cache_key}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([experiment.experiment_id], filter_string):
            self.client.set_tag(run.info.run_id, f"{TAG}abandoned", "its process stopped before registering")
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    def _tag(self, line: str, version: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name(line), str(version), f"{TAG}{key}", value)

    def _experiment(self, line: str) -> str:
        name = experiment_name(line)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.root / "mlartifacts" / line).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _lineage_tags(self, data: DataVersion, cache_key: str, code_version: str) -> dict[str, str]:
        return {
            f"{TAG}code_version": code_version,
            f"{TAG}data_md5": data.md5,
            f"{TAG}data_rev": data.rev or "",
            f"{TAG}git_commit": _git_commit(self.root),
            f"{TAG}cache_key": cache_key,
            f"{TAG}packages": json.dumps(_package_versions()),
            f"{TAG}registered_by": getpass.getuser(),
        }


@cache
def _open_sqlite_store(uri: str) -> None:
    """Create a new SQLite store's tables one process at a time: MLflow creates them on first use,
    and two processes doing so at once collide ("Online migration expected to match one row")."""
    with locked(Path(f"{uri.removeprefix('sqlite:///')}.init.lock")):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


class LockTimeoutError(RuntimeError):
    """Waited longer than asked for a line's lock; the message names its holder."""


class LockLostError(RuntimeError):
    """The holder of a line's lock was presumed dead and its turn was taken over."""


class LineLock:
    """One writer of a line's versions and aliases at a time, wherever the writers run.

    The lock is a lease kept as a registered model ``padim-<line>.lock-<generation>``: creating a
    registered model is atomic (a unique name in MLflow's database, on SQLite as on a server), so
    of two writers that try the next generation exactly one gets it. The holder renews its lease
    (tag ``padim.lock.renewed``) and marks it released when done; a lock whose holder process is
    gone (same machine: boot and pid namespace, not just the host name) or whose lease a waiter saw
    unrenewed for ``LOCK_TTL_S`` by its own clock (no comparison of two machines' clocks) is taken
    over by creating the next generation. The newest generation is never deleted, so a slow writer
    that created an older one sees a newer one and backs off; :meth:`check` tells a holder whose
    lock was taken over. The registry's UI shows who holds a line (host, pid, purpose, since).
    """

    def __init__(self, client: MlflowClient, line: str, purpose: str, timeout_s: float | None = None,
                 ttl_s: float = LOCK_TTL_S) -> None:
        self.client, self.line, self.purpose = client, line, purpose
        self.prefix = f"{model_name(line)}.lock-"
        self.timeout_s, self.ttl_s = timeout_s, ttl_s
        self.generation = 0
        self._seen: dict[str, tuple[str, float]] = {}  # lock -> (its renewal stamp, when first seen)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> LineLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        started, reported = time.monotonic(), False
        while True:
            generations = self._generations()
            newest = max(generations, default=0)
            holder = generations.get(newest)
            if holder is None or self._free(self._name(newest), holder):
                if self._claim(newest + 1):
                    break
                continue
            if not reported:
                log.warning("%s: waiting for the line's lock, held by %s", self.line, _describe(holder))
                reported = True
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                msg = (f"{self.line}: gave up after {self.timeout_s:g} s waiting for the line's lock,"
                       f" held by {_describe(holder)}")
                raise LockTimeoutError(msg)
            time.sleep(LOCK_POLL_S)
        for older in (g for g in generations if g < self.generation):
            self._delete(older)
        self._renewer = threading.Thread(target=self._renew, name=f"lock-{self.line}", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise LockLostError if another writer took this lock over (this holder looked dead)."""
        newest = max(self._generations(), default=0)
        if newest != self.generation:
            msg = (f"{self.line}: the line's lock was taken over (generation {newest}, ours"
                   f" {self.generation}), after {self.ttl_s:g} s without renewal; this writer stops before"
                   " changing aliases")
            raise LockLostError(msg)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.client.set_registered_model_tag(self._name(self.generation), f"{TAG}lock.released", _now())
        except MlflowException as error:  # the next writer will see the lease expire instead
            log.warning("%s: could not release the line's lock: %s", self.line, error)
        _HELD_HERE.discard(self._name(self.generation))

    def _claim(self, generation: int) -> bool:
        """Create lock ``generation``; True if it is ours and still the newest."""
        tags = {f"{TAG}lock.host": socket.gethostname(), f"{TAG}lock.machine": _machine(),
                f"{TAG}lock.pid": str(os.getpid()), f"{TAG}lock.purpose": self.purpose,
                f"{TAG}lock.since": _now(), f"{TAG}lock.renewed": _now()}
        name = self._name(generation)
        with _CLAIMING:  # another thread must not see it created yet not held here
            try:
                description = f"lock of {model_name(self.line)}: {self.purpose}"
                self.client.create_registered_model(name, tags=tags, description=description)
            except MlflowException as error:
                if error.error_code in CLAIM_LOST:
                    return False
                raise
            _HELD_HERE.add(name)
        if max(self._generations(), default=0) != generation:  # created below a newer one: stale
            _HELD_HERE.discard(name)
            self._delete(generation)
            return False
        self.generation = generation
        return True

    def _free(self, name: str, holder: dict[str, str]) -> bool:
        """Released; left by a process of this machine that is gone or (its release having failed,
        say while MLflow was unreachable) is this one and no longer holds it; or unrenewed for the
        lease's length, as this waiter has watched it."""
        if f"{TAG}lock.released" in holder:
            return True
        if holder.get(f"{TAG}lock.machine") == _machine():
            pid = holder.get(f"{TAG}lock.pid")
            if pid != str(os.getpid()) and not _alive(pid):
                return True
            if pid == str(os.getpid()):
                with _CLAIMING:
                    if name not in _HELD_HERE:
                        return True
        stamp, now = holder.get(f"{TAG}lock.renewed", ""), time.monotonic()
        if self._seen.get(name, ("", 0.0))[0] != stamp:
            self._seen[name] = (stamp, now)
        return now - self._seen[name][1] > self.ttl_s

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 6):
            try:
                self.client.set_registered_model_tag(self._name(self.generation), f"{TAG}lock.renewed",
                                                     _now())
            except MlflowException as error:
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # taken over and cleaned: check() says so
                    return
                log.warning("%s: could not renew the line's lock: %s", self.line, error)

    def _generations(self) -> dict[int, dict[str, str]]:
        found = self.client.search_registered_models(f"name LIKE '{self.prefix}%'", max_results=1000)
        return {int(model.name.removeprefix(self.prefix)): dict(model.tags) for model in found
                if model.name.startswith(self.prefix) and model.name.removeprefix(self.prefix).isdigit()}

    def _delete(self, generation: int) -> None:
        try:
            self.client.delete_registered_model(self._name(generation))
        except MlflowException:
            pass  # already gone: another writer cleaned it

    def _name(self, generation: int) -> str:
        return f"{self.prefix}{generation:06d}"


def _describe(holder: dict[str, str]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get(f"{TAG}lock.since", 0))))
    return (f"{holder.get(f'{TAG}lock.purpose', '?')} (host {holder.get(f'{TAG}lock.host', '?')},"
            f" pid {holder.get(f'{TAG}lock.pid', '?')}, since {since})")


@cache
def _machine() -> str:
    """This machine as its processes see it: boot id and pid namespace, so that two containers
    that share a host name (and number their processes alike) are told apart."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no /proc: the host name is all there is
        return socket.gethostname()
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _alive(pid: str | None) -> bool:
    """Whether a process of this host is running (unknown counts as running)."""
    if not pid or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return f"{time.time():.3f}"


def _pip_requirements() -> list[str]:
    """What scoring a registered model needs: padim-plugin's own dependencies, pinned as installed."""
    return [f"{name}=={version}" for name, version in _package_versions().items()
            if name in SCORING_PACKAGES]


def _example_images(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _signature():  # noqa: ANN202
    """Named outputs; no input schema, since one cannot say "uint8 pixels or encoded images"."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=None,  # pixels or encoded images: flows/pyfunc.py checks and decodes either
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1,), "pred_score"),
            TensorSpec(np.dtype(np.int64), (-1,), "pred_label"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1), "anomaly_map"),
        ]),
    )


def _package_versions() -> dict[str, str]:
    from padim_plugin.artifact import package_versions

    return package_versions(*PACKAGES)


def _git_commit(root: Path) -> str:
    import subprocess

    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"
