"""Product-line data versions: the one module that touches git, DVC and the DVC remote.

Each line is its own DVC-tracked folder ``data/<line>`` with pointer ``data/<line>.dvc``, so lines
version independently; a version is the DVC md5 of the folder, and a git commit of the pointer
makes it reachable by revision. ``pull`` materialises exactly the version a revision names into a
snapshot keyed by that md5, so flows on different revisions never step on each other.

Faults: ``add`` commits a pointer only once the remote holds its objects and journals what it
changes, so a killed add is undone (or finished) by the next ``DataStore``; ``pull`` checks every
file's md5 against the version's DVC listing before its snapshot appears (one rename), so a corrupt
or missing object, a full disk or a killed pull never leaves a snapshot that would be used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import with_line_entry
from .folders import backup_of, locked, put_back, set_aside, write_atomically
from .layout import content_digest
from .validation import check_line_name, describe, validate_line

SNAPSHOTS = Path(".padim") / "data"
MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")
JOURNALS = Path(".padim") / "adding"  # <line>.json: the state an unfinished add started from; add.lock


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
        self._holding = False  # whether this store holds the add lock (staging, then add)
        if not (self.root / ".dvc").is_dir():
            raise DataVersionError(f"{self.root} is not a DVC repository (no .dvc/): run 'dvc init'")
        self._recover_interrupted_adds()

    @classmethod
    def init(cls, root: str | Path, remote_url: str) -> DataStore:
        """Make ``root`` a git + DVC repository whose default remote is ``remote_url`` (a local
        folder is created: setting a project up is the explicit step that starts its remote)."""
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
        if "://" not in remote_url:
            store.check_remote(create=True)
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
    ) -> DataVersion:
        """Make ``staged`` (MVTec layout) the new version of ``line``: validate, dvc add, push, commit.

        Git, the DVC cache and the remote hold the old version or the new one, never a mix, even if
        the process is killed: the pointer is committed only once the remote holds every object it
        names. Until then the previous folder waits aside and a journal records the old pointer, so
        that an interrupted add is undone (or, if its commit was made, finished) by the next
        ``DataStore`` opened on this project, or by a failure here. The commit holds only what the
        add writes: the pointer, its .gitignore entry and, for a new line, its ``lines.<line>`` entry
        applied to the committed params.yaml; the user's uncommitted edits stay uncommitted, byte for
        byte. The line's entry is added to the working params.yaml too.
        """
        validate_line(staged, min_train_images, min_validation_images)
        target, pointer = self.line_dir(line), self.pointer(line)
        target.parent.mkdir(exist_ok=True)
        with self._adding(line) as journal:
            # a backup left by an add whose last cleanup was cut short is not this add's to restore
            shutil.rmtree(backup_of(target), ignore_errors=True)
            params = self.root / "params.yaml"
            old = {"pointer": pointer.read_text() if pointer.is_file() else None,
                   "ignored": self._ignored(line), "folder": target.exists(), "commit": commit,
                   "params": params.read_text() if params.is_file() else None}
            write_atomically(journal, json.dumps(old))
            try:
                set_aside(target)
                shutil.move(str(staged), target)
                self._dvc("add", [str(target)])
                self._dvc("push", [str(pointer)])
                if commit:
                    self._commit(line)
                self._register_in_worktree(line)
            except BaseException:
                self._settle(line, old)
                journal.unlink()
                raise
            journal.unlink()
            shutil.rmtree(backup_of(target), ignore_errors=True)
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
        try:
            return _pointer_md5(text)
        except DataVersionError as error:
            where = f" at revision {rev!r}" if rev else ""
            raise DataVersionError(f"{pointer}{where}: {error}") from None

    def pull(self, line: str, rev: str | None = None) -> DataVersion:
        """Materialise the version of ``line`` at ``rev`` (default HEAD) and return it with its md5.

        Every file is checked against the version's DVC listing (md5 per path) before the snapshot
        appears, by one rename, under ``.padim/data/<line>/<md5>``: a corrupt or missing object,
        in the cache or the remote, a full disk or a killed process never leaves a snapshot that a
        later pull would use. Concurrent pulls of one version make it once.
        """
        rev = self.commit_of(rev or "HEAD")
        md5 = self.md5(line, rev)
        name = md5.removesuffix(".dir")
        snapshot = self.root / SNAPSHOTS / line / name
        if snapshot.is_dir():
            return DataVersion(line, snapshot, md5, rev)
        where = f"cannot pull product line {line!r} at revision {rev[:12]} (version {md5})"
        try:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            with locked(snapshot.parent / f".{name}.lock"):
                if not snapshot.is_dir():  # else a concurrent pull made it while this one waited
                    for stale in snapshot.parent.glob(f".partial-{name}-*"):  # left by killed pulls
                        shutil.rmtree(stale, ignore_errors=True)
                    partial = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=snapshot.parent))
                    try:
                        self._materialise(line, rev, md5, partial / "data")
                        os.rename(partial / "data", snapshot)
                    finally:
                        shutil.rmtree(partial, ignore_errors=True)
        except DataVersionError as error:
            raise DataVersionError(f"{where}: {error}") from error.__cause__
        except Exception as error:
            raise DataVersionError(f"{where}: {_no_space(error) or error}") from error
        return DataVersion(line, snapshot, md5, rev)

    def _materialise(self, line: str, rev: str, md5: str, out: Path) -> None:
        """Copy the version into ``out`` and check every file against the version's listing."""
        from dvc.api import DVCFileSystem

        fs = DVCFileSystem(str(self.root), rev=rev)
        try:
            expected = self._listing(fs, line, md5)
        except DataVersionError:
            raise
        except Exception as error:
            if _no_space(error):
                raise
            msg = (f"the version's DVC listing (.dir object) is in neither the DVC cache nor the remote"
                   f"{self._remote_problem()} ({error})")
            raise DataVersionError(msg) from error
        try:
            fs.get(f"data/{line}", str(out), recursive=True)
        except Exception as error:
            if _no_space(error):
                raise
            self._fetch_one_by_one(fs, line, expected, out, error)
        self._verify(expected, out)

    def listing(self, line: str, rev: str) -> dict[str, str]:
        """{path within the line: md5} of the version at ``rev``, from its DVC listing (checked
        against the version's md5): what a fit can diff against another version's."""
        from dvc.api import DVCFileSystem

        rev = self.commit_of(rev)
        return self._listing(DVCFileSystem(str(self.root), rev=rev), line, self.md5(line, rev))

    def _listing(self, fs: Any, line: str, md5: str) -> dict[str, str]:
        """{path within the line: md5} from the version's DVC ``.dir`` object, itself checked
        against ``md5`` (the listing's own hash, as DVC computes it)."""
        prefix = f"data/{line}/"
        found = fs.find(prefix.rstrip("/"), detail=True)
        expected = {path.removeprefix(prefix): info["md5"] for path, info in found.items()}
        actual = _tree_md5(expected)
        if actual != md5:
            raise DataVersionError(f"the DVC listing of the version is corrupt (its md5 is {actual})")
        return expected

    def _fetch_one_by_one(self, fs: Any, line: str, expected: dict[str, str], out: Path,
                          error: Exception) -> None:
        """After a failed bulk copy: fetch what is still missing file by file, and name the files
        that neither the cache nor the remote can give."""
        unavailable = []
        for relpath in expected:
            path = out / relpath
            if path.is_file():
                continue  # a copy cut short is caught by the md5 check
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"data/{line}/{relpath}", str(path))
            except Exception as file_error:
                if _no_space(file_error):
                    raise
                unavailable.append(relpath)
        if unavailable:
            msg = (f"{len(unavailable)} file(s) in neither the DVC cache nor the remote: "
                   f"{_shown(unavailable)}{self._remote_problem()} ({error})")
            raise DataVersionError(msg) from error

    def _verify(self, expected: dict[str, str], out: Path) -> None:
        """Every listed file is there with its md5 and nothing else is; a corrupt copy in the DVC
        cache is removed from it, so that a retry fetches the file from the remote again."""
        problems = []
        present = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
        for relpath, digest in expected.items():
            if relpath not in present:
                problems.append(f"{relpath}: missing")
                continue
            actual = _file_md5(out / relpath)
            if actual != digest:
                problems.append(f"{relpath}: corrupt in the DVC cache or remote (md5 {actual}, not {digest})")
                self._drop_corrupt_cache_object(digest)
        problems += [f"{extra}: not in the version's listing" for extra in sorted(present - expected.keys())]
        if problems:
            msg = f"{len(problems)} file(s) do not match the DVC listing: {_shown(problems)}"
            raise DataVersionError(msg)

    def _drop_corrupt_cache_object(self, digest: str) -> None:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            cached = Path(repo.cache.local.oid_to_path(digest))
        if cached.is_file() and _file_md5(cached) != digest:
            cached.unlink()

    def _remote_problem(self) -> str:
        """'; the DVC remote ... refused the request or is unreachable: why' when so (a wrong key, a
        remote that is down or gone), else ''."""
        from dvc.repo import Repo

        try:
            with Repo(str(self.root)) as repo:
                remote = repo.cloud.get_remote()
                if not remote.fs.exists(remote.path):
                    return f"; the DVC remote {remote.path} is unreachable: it does not exist"
                remote.fs.ls(remote.path)
        except Exception as error:
            return f"; the DVC remote refused the request or is unreachable: {error}"
        return ""

    def remote(self) -> tuple[str, str]:
        """The default DVC remote: (name, URL as configured, a local path made absolute)."""
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            name = repo.config["core"].get("remote")
            if not name:
                raise DataVersionError(f"{self.root} has no default DVC remote: 'dvc remote add -d NAME URL'")
            return name, str(repo.config["remote"][name]["url"])

    def check_remote(self, create: bool = False) -> str:
        """The default remote's URL, once it is known to be reachable and to exist; with ``create``,
        a remote that does not exist yet (a local folder, or an object-store prefix holding nothing)
        may be started. Raises DataVersionError naming the remote otherwise."""
        from dvc.repo import Repo

        name, url = self.remote()
        try:
            with Repo(str(self.root)) as repo:
                remote = repo.cloud.get_remote()
                if remote.fs.protocol in ("http", "https"):  # its file system reads "refused" as "missing"
                    _answers(remote.fs.unstrip_protocol(remote.path))
                    return url  # a web server need not list the remote's root: it exists if it answers
                if remote.fs.exists(remote.path):
                    return url
                if not create:
                    msg = (f"the DVC remote {name!r} ({url}) does not exist: if it moved, point DVC to it"
                           f" ('dvc remote modify {name} url ...'); to start a new remote there, give"
                           " --create-remote")
                    raise DataVersionError(msg)
                if remote.fs.protocol in ("local", "file"):
                    remote.fs.makedirs(remote.path, exist_ok=True)
                else:  # an object store: the first push makes the prefix, the bucket must answer
                    remote.fs.ls(remote.path.split("/", 1)[0])
        except DataVersionError:
            raise
        except Exception as error:
            raise DataVersionError(f"the DVC remote {name!r} ({url}) is unreachable: {error}") from error
        return url

    def missing_on_remote(self, line: str, rev: str) -> list[str]:
        """The files of the version at ``rev`` (and its DVC listing) that the default remote lacks,
        by path within the line ("" for the listing itself)."""
        from dvc.repo import Repo

        md5 = self.md5(line, rev)
        listing = self.listing(line, rev)
        wanted = {md5: ""} | {digest: path for path, digest in listing.items()}
        try:
            with Repo(str(self.root)) as repo:
                present = set(repo.cloud.get_remote().odb.oids_exist(list(wanted)))
        except Exception as error:
            name, url = self.remote()
            raise DataVersionError(f"the DVC remote {name!r} ({url}) is unreachable: {error}") from error
        return sorted(path for digest, path in wanted.items() if digest not in present)

    def role_digests(self, line: str, rev: str) -> dict[str, tuple[str, int]]:
        """{role folder: (its DVC md5, its file count)} of the version at ``rev``, as DVC would hash
        each role folder on its own: the identity of each role's data, for lineage."""
        roles: dict[str, dict[str, str]] = {}
        for path, digest in self.listing(line, rev).items():
            role, _, rest = path.partition("/")
            if rest:  # provenance.csv, beside the role folders, is no role's data
                roles.setdefault(role, {})[rest] = digest
        return {role: (_tree_md5(files), len(files)) for role, files in sorted(roles.items())}

    def commit_of(self, rev: str) -> str:
        """The commit ``rev`` names; a DataVersionError naming it if there is none (or it looks
        like an option, which git would take as one)."""
        if rev.startswith("-"):
            raise DataVersionError(f"git revision {rev!r} starts with '-': give a commit, branch or tag")
        try:
            return self._git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
        except DataVersionError:
            msg = (f"git revision {rev!r} does not exist in {self.root}: give a commit, branch or tag"
                   " (git log --oneline lists the commits)")
            raise DataVersionError(msg) from None

    def committed_text(self, path: Path) -> str | None:
        """A file's text in the commit HEAD names, None if it is not in it."""
        try:
            return self._git("show", f"HEAD:{path.resolve().relative_to(self.root).as_posix()}", strip=False)
        except DataVersionError:
            return None

    def file_digests(self, line: str, rev: str | None = None) -> dict[str, str]:
        """{path within the line: md5 of its content} of the version at ``rev``, for diffs."""
        version = self.pull(line, rev)
        return {path.relative_to(version.path).as_posix(): content_digest(path)
                for path in sorted(version.path.rglob("*")) if path.is_file()}

    def lines(self, rev: str | None = None) -> list[str]:
        """Product lines with a data pointer in the workspace or at a revision."""
        if rev is None:
            return sorted(p.stem for p in (self.root / "data").glob("*.dvc"))
        listing = self._git("ls-tree", "--name-only", f"{rev}:data")
        return sorted(name.removesuffix(".dvc") for name in listing.splitlines() if name.endswith(".dvc"))

    @contextmanager
    def staging(self, line: str) -> Iterator[Path]:
        """A scratch folder ``data/.staging-<line>-*`` to build the next version of ``line`` in,
        removed afterwards. The line's lock is held until the block ends (pass the folder's
        content to ``add`` within it), so the scratch folders of killed adds are removed here."""
        with self._adding(line):
            (self.root / "data").mkdir(exist_ok=True)
            for stale in (self.root / "data").glob(f".staging-{line}-{'?' * 8}"):  # mkdtemp: 8 characters
                shutil.rmtree(stale, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".staging-{line}-", dir=self.root / "data"))
            try:
                yield scratch
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    @contextmanager
    def _adding(self, line: str) -> Iterator[Path]:
        """Hold the project's add lock (one add at a time: lines share params.yaml, data/.gitignore
        and the git index); adds that died before finishing are undone or finished first. Yields
        the line's journal path."""
        journal = self.root / JOURNALS / f"{line}.json"
        if self._holding:  # re-entered: staging, then add
            yield journal
            return
        with locked(self.root / JOURNALS / "add.lock"):
            self._holding = True
            try:
                self._recover_journals()
                yield journal
            finally:
                self._holding = False

    def _recover_interrupted_adds(self) -> None:
        """Undo or finish the adds whose process died (a journal is left and nobody holds the add
        lock); while an add is running, it is left alone."""
        if (self.root / JOURNALS).is_dir():
            with locked(self.root / JOURNALS / "add.lock", wait=False) as mine:
                if mine:
                    self._recover_journals()

    def _recover_journals(self) -> None:
        for journal in sorted((self.root / JOURNALS).glob("*.json")):
            self._recover(journal.stem, journal)

    def _recover(self, line: str, journal: Path) -> None:
        self._settle(line, json.loads(journal.read_text()))
        journal.unlink()

    def _settle(self, line: str, old: dict[str, Any]) -> None:
        """An add stopped half-way: finish it if its commit was made, else undo it."""
        if old["commit"] and self._committed_since(line, old["pointer"]):
            self._register_in_worktree(line)
            shutil.rmtree(backup_of(self.line_dir(line)), ignore_errors=True)  # only the cleanup was left
        else:
            self._undo(line, old)

    def _committed_since(self, line: str, old_pointer: str | None) -> bool:
        """Whether HEAD holds the workspace's pointer and it is not the one the add started from."""
        if not self.pointer(line).is_file():
            return False
        new = self.md5(line)
        try:
            committed = self.md5(line, "HEAD")
        except DataVersionError:
            return False
        return committed == new and (old_pointer is None or _pointer_md5(old_pointer) != new)

    def _undo(self, line: str, old: dict[str, Any]) -> None:
        """Back to the state the add started from: pointer, index, .gitignore entry and folder.
        Every step can be repeated, should the undo itself be interrupted."""
        pointer, gitignore = self.pointer(line), self.root / "data" / ".gitignore"
        if old["pointer"] is None:
            pointer.unlink(missing_ok=True)
        else:
            write_atomically(pointer, old["pointer"])
        if not old["ignored"] and gitignore.is_file():
            kept = [entry for entry in gitignore.read_text().splitlines() if entry != f"/{line}"]
            if kept:
                write_atomically(gitignore, "".join(f"{entry}\n" for entry in kept))
            else:
                gitignore.unlink()
        # dvc add stages the pointer (core.autostage), and the commit's git add stages them all
        staged = [str(path.relative_to(self.root)) for path in (pointer, gitignore)]
        self._git("reset", "--quiet", "--", *staged)
        params = self.root / "params.yaml"
        if old.get("params") is not None and params.is_file() and \
                params.read_text() == with_line_entry(old["params"], line) != old["params"]:
            write_atomically(params, old["params"])  # the entry this add wrote, and nothing the user did
        target = self.line_dir(line)
        if backup_of(target).exists():
            put_back(target)
        elif not old["folder"]:
            shutil.rmtree(target, ignore_errors=True)

    def _ignored(self, line: str) -> bool:
        gitignore = self.root / "data" / ".gitignore"
        return gitignore.is_file() and f"/{line}" in gitignore.read_text().splitlines()

    def _commit(self, line: str) -> None:
        """Commit the line's pointer and .gitignore as the working tree has them and, if HEAD's
        params.yaml lacks the line, HEAD's params.yaml plus its entry: built in an index of its own
        from HEAD, so nothing else the user changed or staged is committed. HEAD moves only if no
        one else moved it meanwhile."""
        pointer = str(self.pointer(line).relative_to(self.root))
        gitignore = "data/.gitignore"
        head = self._git("rev-parse", "--verify", "--quiet", "HEAD", check=False)
        committed = self.committed_text(self.root / "params.yaml") if head else None
        with tempfile.TemporaryDirectory(prefix=".index-", dir=self.root / ".git") as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            self._git("read-tree", *([head] if head else ["--empty"]), env=index)
            self._git("add", "--", pointer, gitignore, env=index)
            registered = with_line_entry(committed, line)
            if registered != committed:
                blob = self._git("hash-object", "-w", "--stdin", input=registered)
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},params.yaml", env=index)
            tree = self._git("write-tree", env=index)
        if head and tree == self._git("rev-parse", f"{head}^{{tree}}"):
            return  # this version was committed already
        identity = []  # a fresh machine may have no git identity: commit as the tool then
        if not self._git_config("user.email"):
            identity = ["-c", "user.name=padim-mlops", "-c", "user.email=padim-mlops@localhost"]
        message = f"data: {line} version {self.md5(line)}"
        commit = self._git(*identity, "commit-tree", tree, *(["-p", head] if head else []), "-m", message)
        self._move_head(commit, head, message)
        # the user's index: these paths as committed (params.yaml only if it was not staged otherwise)
        self._git("reset", "--quiet", "--", pointer, gitignore)
        if registered != committed and self._git("diff", "--cached", "--name-only", head, "--",
                                                   "params.yaml", check=False) == "":
            self._git("reset", "--quiet", "--", "params.yaml")

    def _move_head(self, commit: str, head: str, message: str) -> None:
        """HEAD to ``commit`` if it still names ``head`` (the commit point of an add)."""
        self._git("update-ref", "-m", message, "HEAD", commit, head or "")

    def _register_in_worktree(self, line: str) -> None:
        """The working params.yaml lists the line (its entry added, the user's edits left as they are)."""
        params = self.root / "params.yaml"
        text = params.read_text() if params.is_file() else None
        registered = with_line_entry(text, line)
        if registered != text:
            write_atomically(params, registered)  # another command may be reading params.yaml now

    def _git_config(self, key: str) -> str:
        result = subprocess.run(["git", "config", key], cwd=self.root, capture_output=True, text=True)
        return result.stdout.strip()

    def _git(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
             check: bool = True, strip: bool = True) -> str:
        """git's output (stripped unless it is a file's text); with ``check`` False, "" on failure."""
        result = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True, input=input,
                                env={**os.environ, **env} if env else None)
        if result.returncode and check:
            raise DataVersionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
        if result.returncode:
            return ""
        return result.stdout.strip() if strip else result.stdout

    def _dvc(self, command: str, targets: list[str]) -> None:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            with Repo(str(self.root)) as repo:
                getattr(repo, command)(targets)
        except DvcException as error:
            why = self._remote_problem() if command == "push" else ""  # DVC only counts failed files
            raise DataVersionError(f"dvc {command} {' '.join(targets)} failed: {error}{why}") from error


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _answers(url: str) -> None:
    """Raise if nothing answers at ``url`` (an HTTP error status is an answer)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{url} does not answer ({getattr(error, 'reason', error)})") from error


def _tree_md5(files: dict[str, str]) -> str:
    """The md5 DVC gives a folder of these files ({relative path: md5}): its listing's own hash."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for relpath, digest in files.items():
        tree.add(tuple(relpath.split("/")), Meta(), HashInfo("md5", digest))
    tree.digest()
    return tree.hash_info.value


def folder_md5(folder: Path) -> str:
    """The md5 DVC gives ``folder`` (binary files: each file's plain md5), computed from the files."""
    return _tree_md5({path.relative_to(folder).as_posix(): _file_md5(path)
                      for path in sorted(folder.rglob("*")) if path.is_file()})


def _pointer_md5(text: str) -> str:
    """The md5 a ``.dvc`` pointer names, checked to be one (it becomes a folder name and a filter)."""
    try:
        md5 = yaml.safe_load(text)["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as error:
        raise DataVersionError(f"not a DVC pointer of a folder: {error}") from None
    if not isinstance(md5, str) or not MD5.fullmatch(md5):
        raise DataVersionError(f"a DVC pointer names {md5!r}, which is not an md5")
    return md5


def _shown(items: list[str], most: int = 5) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")


def _no_space(error: BaseException | None) -> str:
    """'no space left on device (...)' if ``error`` or one of its causes is ENOSPC, else ''."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return f"no space left on device ({error})"
        error = error.__cause__ or error.__context__
    return ""


def summary(version: DataVersion) -> str:
    counts = ", ".join(f"{name} {count}" for name, count in describe(version.path).items())
    return f"{version.line}: version {version.md5} ({counts})"
