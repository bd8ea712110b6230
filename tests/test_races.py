"""Overlapping writers of one line: retrains, promotions and the registry lock that orders them.

Real MLflow on the project's SQLite file, real processes (``padim-mlops retrain`` twice at once,
as a cron run overlapping a manual one), Prefect's test server for the flows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli import main
from flows.registry import LineLock, LockLostError, LockTimeoutError, Registry, model_name

from .conftest import write_mvtec_folder
from .projects import init_project, tiny_params, versions
from .serving import tracking_server

PARAMS = tiny_params("alpha")
REPOSITORY = Path(__file__).resolve().parents[1]


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
    return root


def padim_mlops(*argv: str) -> subprocess.Popen[str]:
    """``padim-mlops`` in its own process, on the test's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=REPOSITORY, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lock_models(registry: Registry, line: str) -> list[str]:
    found = registry.client.search_registered_models(f"name LIKE '{model_name(line)}.lock-%'")
    return [model.name for model in found]


def test_two_retrains_at_once_give_one_version_and_one_decision(project: Path, store: str) -> None:
    first = padim_mlops("--root", str(project), "retrain", "alpha")
    time.sleep(1)  # a second apart, as in the report
    second = padim_mlops("--root", str(project), "retrain", "alpha")
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], "\n".join(outputs)
    registry = Registry(project)
    assert versions(registry, "alpha") == ["1"]
    champion = registry.champion("alpha")
    assert str(champion.version) == "1" and champion.tags["padim.previous_champion"] == ""
    for output in outputs:  # the winner decided, the other reused its version and decision
        assert "| v1 | champion:" in output, output
    assert sum("reused" in output for output in outputs) == 1
    [lock] = lock_models(registry, "alpha")  # older generations cleaned, the newest released
    assert "padim.lock.released" in registry.client.get_registered_model(lock).tags


def test_the_lock_admits_one_holder_at_a_time_across_threads(project: Path) -> None:
    inside, most, errors = [0], [0], []

    def hold() -> None:
        try:
            with Registry(project).line_lock("alpha", "test"):
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                time.sleep(0.2)
                inside[0] -= 1
        except Exception as error:  # noqa: BLE001  # reported below
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
         "import os, signal, sys\nfrom flows.registry import Registry\n"
         f"Registry({str(project)!r}).line_lock('alpha', 'killed holder').acquire()\n"
         "os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    started = time.monotonic()
    with Registry(project).line_lock("alpha", "after the crash", timeout_s=30) as lock:
        assert lock.generation == 2
    assert time.monotonic() - started < 10  # a dead pid on this host: no lease to wait out


def test_a_live_holder_makes_others_wait_and_names_itself_when_they_give_up(project: Path) -> None:
    with Registry(project).line_lock("alpha", "retrain alpha by hand"):
        with pytest.raises(LockTimeoutError, match=r"held by retrain alpha by hand \(host .*, pid "):
            Registry(project).line_lock("alpha", "cron", timeout_s=1).acquire()


def test_an_unrenewed_lock_is_taken_over_and_its_holder_is_told_before_moving_aliases(project: Path) -> None:
    registry = Registry(project)
    stalled = registry.line_lock("alpha", "a holder on a frozen machine")
    stalled.acquire()
    taker = LineLock(registry.client, "alpha", "cron", timeout_s=30, ttl_s=0.5)  # watches 0.5 s unrenewed
    with taker:
        with pytest.raises(LockLostError, match="taken over"):
            stalled.check()
        taker.check()
    stalled.release()


def test_concurrent_promotions_chain_each_champion_to_the_one_it_replaced(project: Path) -> None:
    registry = Registry(project)
    run = registry.client.create_run(registry.client.create_experiment("scratch")).info.run_id
    registry.client.create_registered_model(model_name("alpha"))
    for _ in range(5):
        registry.client.create_model_version(model_name("alpha"), f"runs:/{run}/model", run)
    threads = [threading.Thread(target=Registry(project).promote, args=("alpha", str(v), "test"))
               for v in range(1, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # follow the chain back from the champion: every version appears once, in promotion order
    chain, version = [], str(registry.champion("alpha").version)
    while version:
        chain.append(version)
        version = registry.version("alpha", version).tags["padim.previous_champion"]
    assert sorted(chain) == ["1", "2", "3", "4", "5"]
    for expected in chain[1:]:
        assert registry.rollback("alpha") == expected
