"""A scratch padim project (git + DVC with a local remote), shared by the tests and bench/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flows.data import DataStore


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def init_project(root: Path, remote: Path, params: str) -> DataStore:
    """A git + DVC project (local remote) holding ``params`` and whatever ``root`` already has,
    committed, with a git identity of its own."""
    root.mkdir(parents=True, exist_ok=True)
    store = DataStore.init(root, str(remote))
    git(root, "config", "user.email", "tests@example.com")
    git(root, "config", "user.name", "tests")
    (root / "params.yaml").write_text(params)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    return store
