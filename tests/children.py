"""``padim-mlops`` in child processes that do not import the world again.

A test that needs a command in a process of its own (to kill it, or to race another) used to start
a new Python, which spends about 10 s of CPU importing torch, Lightning, anomalib, MLflow, Prefect
and DVC before its first line. Here the children are forked from one server per test process that
imported them once (multiprocessing's forkserver, itself a fresh single-threaded Python). Each
child is still a process of its own, with its own environment, working folder and output, that
exits or dies by SIGKILL like any other, and runs the command's exit handlers as Python would.

    child = start(["--root", root, "retrain", "alpha"], env={"PREFECT_API_URL": url})
    result = child.wait(timeout=600)  # a CompletedProcess: returncode, stdout, stderr

``before`` runs in the child first (tests/kill.py sets its kill point there).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import prefect.context

from flows.cli import main

from .projects import REPOSITORY

# what padim-mlops imports as it works: imported once, in the server the children are forked from
PRELOADED = ["torch", "lightning.pytorch", "anomalib.engine", "mlflow.pyfunc", "prefect.main", "dvc.repo",
             "flows.cli", "flows.retrain", "flows.export", "tests.children", "tests.kill"]

_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(PRELOADED)


class Child:
    """A running ``padim-mlops`` child; ``wait`` gives what ``subprocess.run`` would."""

    def __init__(self, argv: list[str], env: dict[str, str], before: Callable[[], None] | None) -> None:
        self.argv = argv
        self._output = Path(tempfile.mkdtemp(prefix="padim-child-"))
        for name in ("stdout", "stderr"):  # there to read even if the child dies before it writes
            (self._output / name).touch()
        self._process = _FORKSERVER.Process(target=_run, args=(argv, env, str(REPOSITORY), str(self._output),
                                                                before), daemon=False)
        self._process.start()

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Its exit code (negative: the signal that ended it), stdout and stderr; a child still
        running after ``timeout`` seconds is killed and the error says so."""
        self._process.join(timeout)
        timed_out = self._process.exitcode is None
        if timed_out:
            self._process.kill()
            self._process.join()
        stdout, stderr = ((self._output / name).read_text(errors="replace") for name in ("stdout", "stderr"))
        shutil.rmtree(self._output)
        if timed_out:
            raise subprocess.TimeoutExpired(self.argv, timeout, stdout, stderr)
        return subprocess.CompletedProcess(self.argv, self._process.exitcode, stdout, stderr)


def start(argv: list[str], env: dict[str, str] | None = None,
          before: Callable[[], None] | None = None) -> Child:
    """``padim-mlops ARGV`` in a child with this process's environment updated by ``env``, cwd the
    repository root; ``before`` (picklable) runs in the child first."""
    return Child(list(map(str, argv)), {**os.environ, **(env or {})}, before)


def _run(argv: list[str], env: dict[str, str], cwd: str, output: str,
         before: Callable[[], None] | None) -> None:
    """The child: the caller's environment, folder and output files, then the command."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        file = os.open(Path(output) / stream, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(file, fd)
        os.close(file)
    prefect.context.refresh_global_settings_context()  # Prefect read its settings as it was imported
    if before:
        before()
    try:
        code = main(argv)
    finally:
        atexit._run_exitfuncs()  # the child leaves with os._exit, which skips them
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)
