"""What produced a model, recorded exactly: the commit of its params and code, the data version and
the DVC remote that holds it.

A retrain reads params.yaml and the code from the working tree, so it records a commit only if the
tree is that commit: uncommitted changes to params.yaml, flows/ or padim_plugin/ are refused unless
the caller allows them, and then the version is marked dirty and never promoted automatically. The
data version must be complete on the DVC remote before its model may become champion: a team
member's machine must be able to pull what the champion was fitted on.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..data.store import DataStore, DataVersion
from .gates import CLEAN_TREE, DATA_ON_REMOTE, Check

TRACKED = ("params.yaml", "flows", "padim_plugin")  # what a retrain reads from the working tree


class DirtyTreeError(RuntimeError):
    """The working tree has uncommitted changes that a retrain would run but not record."""


@dataclass(frozen=True)
class RoleData:
    """One role folder of a data version, as a dataset input of the run."""

    role: str
    md5: str
    files: int


@dataclass(frozen=True)
class Lineage:
    git_commit: str
    dirty: tuple[str, ...]  # uncommitted paths among TRACKED
    remote_name: str
    remote_url: str
    missing_on_remote: tuple[str, ...]  # files of the version the remote lacks ("" its listing)
    roles: tuple[RoleData, ...]

    def blockers(self, data: DataVersion) -> list[Check]:
        """What bars this lineage's model from becoming champion automatically."""
        found = []
        if self.dirty:
            changes = ", ".join(self.dirty)
            found.append(Check(CLEAN_TREE, False, f"fitted from uncommitted changes ({changes}): a dirty"
                               " version is never promoted automatically"))
        if self.missing_on_remote:
            count = len(self.missing_on_remote)
            found.append(Check(DATA_ON_REMOTE, False, (
                f"{count} file(s) of data version {data.md5} are not on the DVC remote {self.remote_name!r}"
                f" ({self.remote_url}): push them ('dvc push -r {self.remote_name} -A data/{data.line}.dvc'),"
                f" then run 'padim-mlops retrain {data.line}' again")))
        return found

    def tags(self) -> dict[str, str]:
        return {"git_commit": self.git_commit, "dirty": "true" if self.dirty else "false",
                "dirty_paths": ",".join(self.dirty), "data_remote": self.remote_url,
                "data_on_remote": "false" if self.missing_on_remote else "true"}


def uncommitted(root: Path) -> list[str]:
    """The paths among TRACKED that differ from HEAD (changed, staged or untracked)."""
    present = [name for name in TRACKED if (root / name).exists()]
    if not present:
        return []
    result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *present],
                            cwd=root, capture_output=True, text=True)
    if result.returncode:
        raise DirtyTreeError(f"{root} is not a git repository: {result.stderr.strip()}")
    return sorted({line[3:].strip().strip('"') for line in result.stdout.splitlines() if line.strip()})


def require_clean(root: Path, allow_dirty: bool) -> list[str]:
    """The uncommitted paths a retrain would run; a DirtyTreeError unless ``allow_dirty``."""
    dirty = uncommitted(root)
    if dirty and not allow_dirty:
        msg = (f"uncommitted changes to {', '.join(dirty)} in {root}: a retrain records the commit it"
               " ran, so commit them first (or give --allow-dirty: the version is then marked dirty and"
               " never promoted automatically)")
        raise DirtyTreeError(msg)
    return dirty


def head_commit(root: Path) -> str:
    """The commit the project's HEAD names ("unknown" outside git)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return commit.stdout.strip() if commit.returncode == 0 else "unknown"


def lineage_of(root: Path, data: DataVersion, dirty: list[str]) -> Lineage:
    store = DataStore(root)
    name, url = store.remote()
    rev = data.rev or "HEAD"
    roles = tuple(RoleData(role, md5, files)
                  for role, (md5, files) in store.role_digests(data.line, rev).items())
    return Lineage(head_commit(root), tuple(dirty), name, url, tuple(store.missing_on_remote(data.line, rev)),
                   roles)
