"""A product line's writer turn: one writer of its versions, aliases and audit events at a time,
wherever the writers run.

The lock is a lease kept in MLflow's tracking store as an experiment ``padim-locks/<line>/<generation>``
(not a registered model: the model list a user reads holds models only). Creating an experiment is
atomic on its unique name, on SQLite as on a server, and a deleted experiment keeps its name, so of
two writers that try the next generation exactly one gets it. The holder renews its lease (tag
``padim.lock.renewed``) and deletes the experiment when done, so a lock shows in the experiment list
only while it is held (``mlflow gc`` purges the deleted ones). A lock whose holder process is gone
(same machine: boot and pid namespace, not just the host name) or whose lease a waiter saw
unrenewed for ``LOCK_TTL_S`` by its own clock (no comparison of two machines' clocks) is taken over
by creating the next generation; :meth:`LineLock.check` tells a holder whose lock was taken over.
The lock's tags say who holds a line (host, pid, purpose, since).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import cache
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Experiment, ViewType
from mlflow.exceptions import MlflowException

from ..data.validation import check_line_name

TAG = "padim.lock."
LOCK_TTL_S = 120.0  # a lock not renewed for this long was abandoned (its holder died elsewhere)
LOCK_POLL_S = 0.5
# creating a lock generation failed because another writer got there first, or SQLite was busy:
# look again rather than fail
CLAIM_LOST = ("RESOURCE_ALREADY_EXISTS", "TEMPORARILY_UNAVAILABLE")
DELETED = "deleted"
_HELD_HERE: set[str] = set()  # lock generations this process holds now (any thread)
_CLAIMING = threading.Lock()  # makes creating a lock and noting it in _HELD_HERE one step
log = logging.getLogger(__name__)


class LockTimeoutError(RuntimeError):
    """Waited longer than asked for a line's lock; the message names its holder."""


class LockLostError(RuntimeError):
    """The holder of a line's lock was presumed dead and its turn was taken over."""


def lock_prefix(line: str) -> str:
    return f"padim-locks/{check_line_name(line)}/"


class LineLock:
    """One writer of a line at a time (see the module docstring); ``with LineLock(...):``."""

    def __init__(self, client: MlflowClient, line: str, purpose: str, timeout_s: float | None = None,
                 ttl_s: float = LOCK_TTL_S) -> None:
        self.client, self.line, self.purpose = client, line, purpose
        self.prefix = lock_prefix(line)
        self.timeout_s, self.ttl_s = timeout_s, ttl_s
        self.generation = 0
        self._experiment_id = ""
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
            newest = self._newest()
            holder = dict(newest.tags) if newest is not None else None
            generation = self._generation(newest) if newest is not None else 0
            if newest is None or self._free(newest):
                if self._claim(generation + 1):
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
        for older in self._active():  # taken over from dead holders, or left by failed releases
            if self._generation(older) < self.generation:
                self._delete(older.experiment_id)
        self._renewer = threading.Thread(target=self._renew, name=f"lock-{self.line}", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise LockLostError if another writer took this lock over (this holder looked dead)."""
        newest = self._newest()
        generation = self._generation(newest) if newest is not None else 0
        if generation != self.generation:
            msg = (f"{self.line}: the line's lock was taken over (generation {generation}, ours"
                   f" {self.generation}), after {self.ttl_s:g} s without renewal; this writer stops before"
                   " changing aliases")
            raise LockLostError(msg)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.client.set_experiment_tag(self._experiment_id, f"{TAG}released", _now())
            self.client.delete_experiment(self._experiment_id)
        except MlflowException as error:  # the next writer will see the lease expire instead
            log.warning("%s: could not release the line's lock: %s", self.line, error)
        _HELD_HERE.discard(self._name(self.generation))

    def _claim(self, generation: int) -> bool:
        """Create lock ``generation``; True if it is ours and still the newest."""
        tags = {f"{TAG}host": socket.gethostname(), f"{TAG}machine": _machine(),
                f"{TAG}pid": str(os.getpid()), f"{TAG}purpose": self.purpose, f"{TAG}since": _now(),
                f"{TAG}renewed": _now(),
                "mlflow.note.content": f"lock of product line {self.line}: {self.purpose}"}
        name = self._name(generation)
        with _CLAIMING:  # another thread must not see it created yet not held here
            try:
                experiment_id = self.client.create_experiment(name, tags=tags)
            except MlflowException as error:
                if error.error_code in CLAIM_LOST:
                    return False
                raise
            _HELD_HERE.add(name)
        newest = self._newest()
        if newest is None or self._generation(newest) != generation:  # created below a newer one: stale
            _HELD_HERE.discard(name)
            self._delete(experiment_id)
            return False
        self.generation, self._experiment_id = generation, experiment_id
        return True

    def _free(self, lock: Experiment) -> bool:
        """Released; left by a process of this machine that is gone or (its release having failed,
        say while MLflow was unreachable) is this one and no longer holds it; or unrenewed for the
        lease's length, as this waiter has watched it."""
        holder = dict(lock.tags)
        if lock.lifecycle_stage == DELETED or f"{TAG}released" in holder:
            return True
        if holder.get(f"{TAG}machine") == _machine():
            pid = holder.get(f"{TAG}pid")
            if pid != str(os.getpid()) and not _alive(pid):
                return True
            if pid == str(os.getpid()):
                with _CLAIMING:
                    if lock.name not in _HELD_HERE:
                        return True
        stamp, now = holder.get(f"{TAG}renewed", ""), time.monotonic()
        if self._seen.get(lock.name, ("", 0.0))[0] != stamp:
            self._seen[lock.name] = (stamp, now)
        return now - self._seen[lock.name][1] > self.ttl_s

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 6):
            try:
                self.client.set_experiment_tag(self._experiment_id, f"{TAG}renewed", _now())
            except MlflowException as error:
                if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
                                        "INVALID_PARAMETER_VALUE"):  # taken over and cleaned: check() says so
                    return
                log.warning("%s: could not renew the line's lock: %s", self.line, error)

    def _newest(self) -> Experiment | None:
        """The line's highest lock generation, held, released or deleted (names are zero-padded,
        so the highest sorts last; LIKE's '_' wildcard may also match other lines' locks)."""
        token = None
        while True:
            page = self.client.search_experiments(view_type=ViewType.ALL, max_results=100, page_token=token,
                                                  filter_string=f"name LIKE '{self.prefix}%'",
                                                  order_by=["name DESC"])
            for experiment in page:
                if self._generation(experiment) > 0:
                    return experiment
            token = page.token
            if not token:
                return None

    def _active(self) -> list[Experiment]:
        found = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                               filter_string=f"name LIKE '{self.prefix}%'")
        return [experiment for experiment in found if self._generation(experiment) > 0]

    def _generation(self, lock: Experiment) -> int:
        """The generation a lock experiment of this line is, 0 if it is not one."""
        number = lock.name.removeprefix(self.prefix)
        return int(number) if lock.name.startswith(self.prefix) and number.isdigit() else 0

    def _delete(self, experiment_id: str) -> None:
        try:
            self.client.delete_experiment(experiment_id)
        except MlflowException:
            pass  # already gone: another writer cleaned it

    def _name(self, generation: int) -> str:
        return f"{self.prefix}{generation:06d}"


def _describe(holder: dict[str, str] | None) -> str:
    holder = holder or {}
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get(f"{TAG}since", 0))))
    return (f"{holder.get(f'{TAG}purpose', '?')} (host {holder.get(f'{TAG}host', '?')},"
            f" pid {holder.get(f'{TAG}pid', '?')}, since {since})")


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
