"""A scratch padim project (git + DVC with a local remote), shared by the tests and bench/."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import yaml
from dvc.repo import Repo

from flows.cli import main
from flows.data.store import DataStore
from flows.registry.registry import SQLITE_STORE as STORE
from flows.registry.registry import Registry, model_name, open_sqlite_store

REPOSITORY = Path(__file__).resolve().parents[1]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@cache
def empty_project() -> Path:
    """Made once per test process and copied into each new project: git and DVC initialised, and
    an MLflow SQLite store with its tables (creating them takes seconds, copying them nothing)."""
    template = Path(tempfile.mkdtemp(prefix="padim-tests-template-"))
    subprocess.run(["git", "init", "--quiet", str(template)], check=True)
    Repo.init(str(template))
    open_sqlite_store(f"sqlite:///{template / STORE}")
    return template


def init_project(root: Path, remote: Path | str, params: str) -> DataStore:
    """A git + DVC project (local remote: a path, or relative to the working folder) holding
    ``params`` and whatever ``root`` already has, committed, with a git identity of its own, and
    an empty MLflow store (SQLite, in the project as the embedded default has it)."""
    shutil.copytree(empty_project(), root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(f"{STORE}*"))
    store = DataStore.init(root, str(remote))
    git(root, "config", "user.email", "tests@example.com")
    git(root, "config", "user.name", "tests")
    (root / "params.yaml").write_text(params)
    with (root / ".gitignore").open("a") as ignored:  # as this repository's own: the store is no source
        ignored.write(f"/{STORE}\n/{STORE}.init.lock\n/mlartifacts/\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project")
    shutil.copy(empty_project() / STORE, root / STORE)
    return store


def tiny_params(*lines: str) -> str:
    """params.yaml for small synthetic lines that fit in seconds, gated on image AUROC only. Their
    few validation images cannot support a false-alarm budget, so they take the F1 rule."""
    return (
        "defaults:\n"
        "  model: {n_features: 16}\n"
        "  data: {image_size: 64, train_batch_size: 4, eval_batch_size: 8, min_train_images: 5,\n"
        "         min_validation_images: 2}\n"
        "  thresholds: {rule: f1}\n"
        "  gates:\n"
        "    floors: {image_auroc: 0.7}\n"
        "lines:\n" + "".join(f"  {line}: {{}}\n" for line in lines)
    )


def versions(registry: Registry, line: str) -> list[str]:
    """The line's registered model versions, in order."""
    found = registry.client.search_model_versions(f"name = '{model_name(line)}'")
    return sorted((str(version.version) for version in found), key=int)


def lists_line(text: str | None, name: str) -> bool:
    """Whether params.yaml's ``text`` (None: no file) has an entry for line ``name``."""
    document = yaml.safe_load(text or "")
    lines = document.get("lines") if isinstance(document, dict) else None
    return isinstance(lines, dict) and name in lines


def padim(root: Path, *argv: str) -> int:
    """``padim-mlops --root ROOT ARGV...`` in this process; its exit code."""
    return main(["--root", str(root), *map(str, argv)])


def add_folders(root: Path, line: str, normal: Path | None, defects: Path | None = None,
                masks: Path | None = None, *flags: str) -> int:
    """``data add LINE --normal N [--defects D] [--masks M] FLAGS...``: data as a line's arrives."""
    folders = [(option, folder) for option, folder in (("--normal", normal), ("--defects", defects),
                                                        ("--masks", masks)) if folder]
    return padim(root, "data", "add", line, *flags, *[part for pair in folders for part in pair])


def contents(folder: Path) -> dict[str, bytes]:
    """Files by name, wherever their role put them (the test data's names are unique)."""
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
