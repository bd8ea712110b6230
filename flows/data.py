"""Product-line data versions: the one module that touches git, DVC and the DVC remote.

Each line is its own DVC-tracked folder ``data/<line>`` with pointer ``data/<line>.dvc``, so lines
version independently; a version is the DVC md5 of the folder, and a git commit of the pointer
makes it reachable by revision. ``pull`` materialises exactly the version a revision names into a
read-only snapshot keyed by that md5, so flows on different revisions never step on each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from .folders import swapped_in
from .validation import check_line_name, describe, validate_line

SNAPSHOTS = Path(".padim") / "data"


class DataVersionError(RuntimeError):
    """A data version cannot be stored or pulled; the message names the line and revision."""


@dataclass(frozen=True)
class DataVersion:
    """Where a line's data lies locally, and which version it is (for lineage)."""

    line: str
    path: Path
    md5: str
    rev: str | None = None


class DataStore:
    """Adds, pushes and pulls product-line data in one git + DVC repository."""

    def __init__(self, root: str | Path = ".") -> None:
        self.root = Path(root).resolve()
        if not (self.root / ".dvc").is_dir():
            raise DataVersionError(f"{self.root} is not a DVC repository (no .dvc/): run 'dvc init'")

    @classmethod
    def init(cls, root: str | Path, remote_url: str) -> DataStore:
        """Make ``root`` a git + DVC repository whose default remote is ``remote_url``."""
        from dvc.repo import Repo

        root = Path(root).resolve()
        if not (root / ".git").exists():
            subprocess.run(["git", "init", "--quiet", str(root)], check=True)
        if not (root / ".dvc").is_dir():
            Repo.init(str(root))
        store = cls(root)
        with Repo(str(root)) as repo, repo.config.edit() as config:
            config["remote"]["default"] = {"url": remote_url}
            config["core"].update({"remote": "default", "autostage": True, "analytics": False})
        return store

    def line_dir(self, line: str) -> Path:
        return self.root / "data" / check_line_name(line)

    def pointer(self, line: str) -> Path:
        return self.root / "data" / f"{check_line_name(line)}.dvc"

    def add(
        self,
        line: str,
        staged: Path,
        min_train_images: int = 1,
        min_validation_images: int = 0,
        commit: bool = True,
        also_commit: tuple[Path, ...] = (),
    ) -> DataVersion:
        """Make ``staged`` (MVTec layout) the new version of ``line``: validate, dvc add, push, commit.

        The previous folder is kept aside until the new version is safely in the DVC cache, and put
        back if anything fails before that.
        """
        validate_line(staged, min_train_images, min_validation_images)
        target = self.line_dir(line)
        target.parent.mkdir(exist_ok=True)
        with swapped_in(staged, target):
            self._dvc("add", [str(target)])
        self._dvc("push", [str(self.pointer(line))])
        if commit:
            self._commit(line, also_commit)
        rev = self._git("rev-parse", "HEAD") if commit else None
        return DataVersion(line, target, self.md5(line), rev)

    def md5(self, line: str, rev: str | None = None) -> str:
        """The DVC md5 of ``data/<line>`` in the workspace (rev None) or at a git revision."""
        pointer = self.pointer(line).relative_to(self.root)
        if rev is None:
            if not self.pointer(line).is_file():
                raise DataVersionError(f"product line {line!r} has no data ({pointer} missing)")
            text = self.pointer(line).read_text()
        else:
            try:
                text = self._git("show", f"{rev}:{pointer.as_posix()}")
            except DataVersionError as error:
                msg = f"product line {line!r} has no data at revision {rev!r}: {error}"
                raise DataVersionError(msg) from None
        return yaml.safe_load(text)["outs"][0]["md5"]

    def pull(self, line: str, rev: str | None = None) -> DataVersion:
        """Materialise the version of ``line`` at ``rev`` (default HEAD) and return it with its md5."""
        rev = self._git("rev-parse", "--verify", f"{rev or 'HEAD'}^{{commit}}")
        md5 = self.md5(line, rev)
        snapshot = self.root / SNAPSHOTS / line / md5.removesuffix(".dir")
        if snapshot.is_dir():
            return DataVersion(line, snapshot, md5, rev)
        from dvc.api import DVCFileSystem

        snapshot.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=snapshot.parent))
        try:
            fs = DVCFileSystem(str(self.root), rev=rev)
            fs.get(f"data/{line}", str(partial / "data"), recursive=True)
            os.rename(partial / "data", snapshot)
        except Exception as error:
            msg = f"cannot pull product line {line!r} at revision {rev[:12]} (version {md5}): {error}"
            raise DataVersionError(msg) from error
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return DataVersion(line, snapshot, md5, rev)

    def file_digests(self, line: str, rev: str | None = None) -> dict[str, str]:
        """{path within the line: md5 of its content} of the version at ``rev``, for diffs."""
        version = self.pull(line, rev)
        from .layout import content_digest

        return {path.relative_to(version.path).as_posix(): content_digest(path)
                for path in sorted(version.path.rglob("*")) if path.is_file()}

    def lines(self, rev: str | None = None) -> list[str]:
        """Product lines with a data pointer in the workspace or at a revision."""
        if rev is None:
            return sorted(p.stem for p in (self.root / "data").glob("*.dvc"))
        listing = self._git("ls-tree", "--name-only", f"{rev}:data")
        return sorted(name.removesuffix(".dvc") for name in listing.splitlines() if name.endswith(".dvc"))

    def _commit(self, line: str, also: tuple[Path, ...]) -> None:
        paths = [str(self.pointer(line).relative_to(self.root)), "data/.gitignore", *map(str, also)]
        self._git("add", *paths)
        if self._git("diff", "--cached", "--name-only", "--", *paths):
            identity = []  # a fresh machine may have no git identity: commit as the tool then
            if not self._git_config("user.email"):
                identity = ["-c", "user.name=padim-mlops", "-c", "user.email=padim-mlops@localhost"]
            message = f"data: {line} version {self.md5(line)}"
            self._git(*identity, "commit", "--quiet", "-m", message, "--", *paths)

    def _git_config(self, key: str) -> str:
        result = subprocess.run(["git", "config", key], cwd=self.root, capture_output=True, text=True)
        return result.stdout.strip()

    def _git(self, *args: str) -> str:
        result = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True)
        if result.returncode:
            raise DataVersionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _dvc(self, command: str, targets: list[str]) -> None:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            with Repo(str(self.root)) as repo:
                getattr(repo, command)(targets)
        except DvcException as error:
            raise DataVersionError(f"dvc {command} {' '.join(targets)} failed: {error}") from error


def summary(version: DataVersion) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in describe(version.path).items())
    return f"{version.line}: version {version.md5} ({counts})"
