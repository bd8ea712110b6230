"""Fault injection: run ``padim-mlops`` in a child Python that SIGKILLs itself at a chosen call.

    result = run_killed(KillPoint("dvc.repo:Repo.push", after=True), ["--root", root, "data", "add", ...])
    assert_killed(result)

The child is forked from an interpreter that has imported the commands' libraries
(tests/children.py), cwd the repository root. It replaces the target (a function or method, found
as ``module:Attr.path``) by a wrapper that counts calls, from any thread, and at call number
``call`` kills the whole process with SIGKILL, before the call runs or, with ``after``, right after
it returns: no ``except``, ``finally`` or ``atexit`` runs, as on a power cut or the OOM killer.
A name bound elsewhere by ``from module import name`` is not affected: trap the attribute that the
code under test looks up at call time.

A kill point that is never reached lets the command run to its end; ``assert_killed`` then fails
the test, so a trap that has gone stale cannot pass vacuously.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .children import start


@dataclass(frozen=True)
class KillPoint:
    target: str  # "module:Attr.path" of a function or method to trap, e.g. "dvc.repo:Repo.push"
    call: int = 1  # which call of it dies (1 = the first)
    after: bool = False  # die right after that call returns, instead of before it runs


def run_killed(point: KillPoint, argv: list[str], env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `padim-mlops *argv` (flows.cli.main) in a child process that SIGKILLs itself
    (os.kill(os.getpid(), signal.SIGKILL): no except, finally or atexit runs) at ``point``."""
    return start(argv, env, before=functools.partial(trap, point)).wait(timeout)


def assert_killed(result: subprocess.CompletedProcess[str]) -> None:
    """The child died of SIGKILL at its kill point, not by finishing or failing on its own."""
    if result.returncode != -signal.SIGKILL:
        tail = "\n".join(result.stderr.splitlines()[-30:])
        raise AssertionError(f"the kill point was not reached: exit code {result.returncode}\n"
                             f"stdout tail: {result.stdout[-2000:]}\nstderr tail:\n{tail}")


def trap(point: KillPoint) -> None:
    """Replace ``point.target`` by a wrapper that kills this process at call ``point.call``."""
    module_name, _, path = point.target.partition(":")
    if not path:
        raise ValueError(f"kill point target {point.target!r} is not 'module:Attr.path'")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    raw = vars(owner)[name] if isinstance(owner, type) and name in vars(owner) else getattr(owner, name)
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
    function = raw.__func__ if kind else raw
    lock, calls = threading.Lock(), [0]

    def die(when: str) -> None:
        print(f"tests.kill: SIGKILL {when} call {point.call} of {point.target}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[0] += 1
            fatal = calls[0] == point.call
        if fatal and not point.after:
            die("before")
        result = function(*args, **kwargs)
        if fatal:
            die("after")
        return result

    setattr(owner, name, kind(wrapper) if kind else wrapper)

