"""Overlapping writers of one line: retrains, promotions and the registry lock that orders them.

Real MLflow on the project's SQLite file, real processes (``padim-mlops retrain`` twice at once,
as a cron run overlapping a manual one), Prefect's test server for the flows.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.cli import main
from flows.registry.lock import LineLock, LockLostError, LockTimeoutError, lock_prefix
from flows.registry.registry import Registry, model_name

from .. import children
from ..projects import REPOSITORY, STORE, init_project, tiny_params, versions
from ..serving import tracking_server
from ..synthetic import write_mvtec_folder

PARAMS = tiny_params("alpha")


@pytest.fixture(params=["sqlite", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The project's SQLite file, or an ``mlflow server`` that two machines would share."""
    if request.param == "sqlite":
        yield request.param
        return
    with tracking_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts",
                         tmp_path / "server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # the children inherit it
        yield request.param


@pytest.fixture
def project(tmp_path: Path, prefect_harness: None) -> Path:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", PARAMS)
    source = write_mvtec_folder(tmp_path / "alpha", 8, 4, 4, n_validation=4)
    assert main(["--root", str(root), "data", "add", "alpha", str(source)]) == 0
    (root / STORE).unlink()  # a new project's: the two retrains create its tables at once
    return root


def padim_mlops(*argv: str) -> children.Child:
    """``padim-mlops`` in its own process, on the test's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    return children.start(list(argv), env={"PREFECT_API_URL": PREFECT_API_URL.value()})


def lock(registry: Registry, line: str, purpose: str, **options: float) -> LineLock:
    return LineLock(registry.client, line, purpose, **options)


def active_locks(registry: Registry, line: str) -> list[str]:
    found = registry.client.search_experiments(filter_string=f"name LIKE '{lock_prefix(line)}%'")
    return [experiment.name for experiment in found]


def test_two_retrains_at_once_give_one_version_and_one_decision(project: Path, store: str) -> None:
    first = padim_mlops("--root", str(project), "retrain", "alpha")
    time.sleep(1)  # a second apart, as in the report
    second = padim_mlops("--root", str(project), "retrain", "alpha")
    results = [process.wait(timeout=600) for process in (first, second)]
    outputs = [result.stdout + result.stderr for result in results]
    assert [result.returncode for result in results] == [0, 0], "\n".join(outputs)
    registry = Registry(project)
    assert versions(registry, "alpha") == ["1"]
    champion = registry.champion("alpha")
    assert str(champion.version) == "1" and champion.tags["padim.previous_champion"] == ""
    for output in outputs:  # the winner decided, the other reused its version and decision
        assert "| v1 | champion:" in output, output
    assert sum("reused" in output for output in outputs) == 1
    assert active_locks(registry, "alpha") == []  # every generation released
    assert [model.name for model in registry.client.search_registered_models()] == ["padim-alpha"]


def test_the_lock_admits_one_holder_at_a_time_across_threads(project: Path) -> None:
    inside, most, errors = [0], [0], []

    def hold() -> None:
        try:
            with lock(Registry(project), "alpha", "test"):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                time.sleep(0.2)
                inside[0] -= 1
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and most[0] == 1


def test_a_lock_whose_holder_was_killed_is_taken_over_at_once(project: Path) -> None:
    holder = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\nfrom flows.registry.lock import LineLock\n"
         "from flows.registry.registry import Registry\n"
         f"LineLock(Registry({str(project)!r}).client, 'alpha', 'killed holder').acquire()\n"
         "os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    started = time.monotonic()
    with lock(Registry(project), "alpha", "after the crash", timeout_s=30) as taken:
        assert taken.generation == 2
    assert time.monotonic() - started < 10  # a dead pid on this host: no lease to wait out


def test_a_live_holder_makes_others_wait_and_names_itself_when_they_give_up(project: Path) -> None:
    with lock(Registry(project), "alpha", "retrain alpha by hand"):
        with pytest.raises(LockTimeoutError, match=r"held by retrain alpha by hand \(host .*, pid "):
            lock(Registry(project), "alpha", "cron", timeout_s=1).acquire()


def test_an_unrenewed_lock_is_taken_over_and_its_holder_is_told_before_moving_aliases(project: Path) -> None:
    registry = Registry(project)
    stalled = lock(registry, "alpha", "a holder on a frozen machine")
    stalled.acquire()
    taker = LineLock(registry.client, "alpha", "cron", timeout_s=30, ttl_s=0.5)  # watches 0.5 s unrenewed
    with taker:
        with pytest.raises(LockLostError, match="taken over"):
            stalled.check()
        taker.check()
    stalled.release()


def bare_versions(registry: Registry, line: str, count: int) -> None:
    """``count`` versions of the line, never gated: promoting them takes --override-gates."""
    run = registry.client.create_run(registry.client.create_experiment("scratch")).info.run_id
    registry.client.create_registered_model(model_name(line))
    for _ in range(count):
        registry.client.create_model_version(model_name(line), f"runs:/{run}/model", run)


def test_concurrent_promotions_chain_each_champion_to_the_one_it_replaced(project: Path) -> None:
    registry = Registry(project)
    bare_versions(registry, "alpha", 5)
    run_all([lambda v=v: Registry(project).promote("alpha", str(v), "test", override_gates=True)
             for v in range(1, 6)])
    # follow the chain back from the champion: every version appears once, in promotion order
    chain, version = [], str(registry.champion("alpha").version)
    while version:
        chain.append(version)
        version = registry.version("alpha", version).tags["padim.previous_champion"]
    assert sorted(chain) == ["1", "2", "3", "4", "5"]
    for expected in chain[1:]:
        assert registry.rollback("alpha", "test").champion_after == expected


def test_concurrent_promotions_and_rollbacks_leave_exactly_their_events_in_the_history(project: Path) -> None:
    registry = Registry(project)
    bare_versions(registry, "alpha", 5)
    run_all([lambda v=v: Registry(project).promote("alpha", str(v), f"promotion {v}", override_gates=True)
             for v in range(1, 6)])
    run_all([lambda i=i: Registry(project).rollback("alpha", f"rollback {i}") for i in range(1, 5)])
    history = registry.history("alpha")
    assert sorted(event.reason for event in history) == sorted(
        [f"promotion {v}" for v in range(1, 6)] + [f"rollback {i}" for i in range(1, 5)])
    assert all(event.status == "FINISHED" and event.by for event in history)
    assert history[0].champion_before == ""  # each event starts from where the one before left off
    for earlier, later in zip(history, history[1:], strict=False):
        assert later.champion_before == earlier.champion_after, (earlier, later)
    assert history[-1].champion_after == str(registry.champion("alpha").version)


def run_all(calls: list[Callable[[], object]]) -> None:
    """Start every call in a thread of its own at once; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as error:  # re-raised below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
