"""MLflow servers as subprocesses on 127.0.0.1: ``mlflow models serve`` (the REST test and
bench/serving.py) and ``mlflow server`` (tests against a tracking server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# MLflow's job runner (two huey consumer processes, for its GenAI jobs) is not used here
WITHOUT_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def mlflow_server(model_uri: str, tracking_uri: str, log: Path, startup_s: float = 240,
                  **env: str) -> Iterator[str]:
    """Serve ``model_uri`` (``--env-manager local``, with ``env`` added to its environment) and
    yield its base URL; the server's output goes to ``log``, whose tail is in the error if it dies
    or does not answer in ``startup_s``."""
    port = free_port()
    command = ["models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port)]
    with _serving(command, port, "/ping", log, startup_s, MLFLOW_TRACKING_URI=tracking_uri, **env) as url:
        yield url


@contextmanager
def tracking_server(backend_uri: str, artifacts: Path, log: Path, port: int | None = None,
                    startup_s: float = 240) -> Iterator[str]:
    """``mlflow server`` (tracking and registry, artifacts proxied from ``artifacts``) on 127.0.0.1;
    yields its URL. A restart on the same ``port`` and stores is the same server to its clients."""
    port = port or free_port()
    command = ["server", "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with _serving(command, port, "/health", log, startup_s, **WITHOUT_JOB_RUNNER) as url:
        yield url


@contextmanager
def _serving(mlflow_args: list[str], port: int, health: str, log: Path, startup_s: float,
             **env: str) -> Iterator[str]:
    """Run ``mlflow *mlflow_args`` in its own process group until the block ends; yield its URL
    once ``health`` answers."""
    bin_dir = Path(sys.executable).parent
    environment = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env)
    with log.open("w") as output:
        server = subprocess.Popen([str(bin_dir / "mlflow"), *mlflow_args], env=environment,
                                  start_new_session=True, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {server.returncode}" if server.returncode is not None else "no answer"
                raise RuntimeError(f"mlflow {mlflow_args[0]} {state}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}{health}", timeout=2)
                break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """End the server and its workers (one process group): politely, then by force. Returns once
    every process of the group has ended, since a worker may still be shutting down (writing what
    it buffered) after the process that started it is gone."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if server.poll() is not None and not _group_alive(server.pid):
                return
            time.sleep(0.1)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (a zombie, ended but not yet reaped, does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
        except OSError:
            continue  # it ended while being looked at
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            return True
    return False
