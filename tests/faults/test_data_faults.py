"""Data versions under faults: processes killed mid-way (SIGKILL), a DVC remote that cannot be
reached, corrupt or missing objects, a full disk, concurrent pulls. Real git, DVC and local remote."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flows.cli import main
from flows.data.store import SNAPSHOTS, DataStore, DataVersionError

from .. import children
from ..kill import KillPoint, assert_killed, run_killed
from ..projects import REPOSITORY, contents, git, init_project, lists_line, tiny_params
from ..synthetic import Synthetic, save, write_mvtec_folder

PARAMS = tiny_params("alpha", "beta")


def new_project(base: Path) -> DataStore:
    """A project at ``base/project`` whose DVC remote ``base/remote`` is named relative to it, so
    that a copy of ``base`` (and a clone beside the project) is a project of its own."""
    root = base / "project"
    store = init_project(root, os.path.relpath(base / "remote"), PARAMS)  # DVC keeps it relative to .dvc/
    assert "../../remote" in (root / ".dvc" / "config").read_text()
    return store


def source(base: Path, name: str, seed: int) -> Path:
    return write_mvtec_folder(base / name, 8, 2, 2, seed=seed, n_validation=2)


def add_argv(root: Path, line: str, folder: Path) -> list[str]:
    return ["--root", str(root), "data", "add", line, str(folder)]


def listing(store: DataStore, md5: str) -> dict[str, str]:
    """{path within the line: md5} from the version's .dir object in the cache."""
    entries = json.loads(cache_object(store, md5).read_text())
    return {entry["relpath"]: entry["md5"] for entry in entries}


def cache_object(store: DataStore, md5: str) -> Path:
    return store.root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def remote_object(store: DataStore, md5: str) -> Path:
    return store.root.parent / "remote" / "files" / "md5" / md5[:2] / md5[2:]


def leftovers(store: DataStore, line: str) -> list[str]:
    """Snapshots and partial copies of ``line`` (lock files aside)."""
    folder = store.root / SNAPSHOTS / line
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


# ----------------------------------------------------------------------------- data add, killed

# kill point -> the version git must hold afterwards. The add puts the objects in the cache (dvc
# add), then in the remote (push), then commits the pointer. dvc_objects.fs.generic.transfer: call 2
# copies the files into the cache (where the .dir listing already is), call 4 puts the listing in
# the remote after the files (call 3). The add then builds its commit in an index of its own and
# moves HEAD to it (_move_head: the commit point).
ADD_KILLS = {
    "data-add-before-dvc-add": (KillPoint("dvc.repo:Repo.add"), "old"),
    "data-add-during-dvc-add": (KillPoint("dvc_objects.fs.generic:transfer", call=2), "old"),
    "data-add-after-dvc-add": (KillPoint("dvc.repo:Repo.add", after=True), "old"),
    "data-add-during-push": (KillPoint("dvc_objects.fs.generic:transfer", call=4), "old"),
    "data-add-after-push": (KillPoint("dvc.repo:Repo.push", after=True), "old"),
    "data-add-before-git-commit": (KillPoint("flows.data.store:DataStore._move_head"), "old"),
    "data-add-after-git-commit": (KillPoint("flows.data.store:DataStore._commit", after=True), "new"),
}


@pytest.fixture(scope="module", params=list(ADD_KILLS), ids=list(ADD_KILLS))
def killed_add(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project whose line alpha has version v1, and a ``data add alpha v2`` killed at the point;
    each test gets a copy (see ``killed``)."""
    point, expected = ADD_KILLS[request.param]
    base = tmp_path_factory.mktemp(request.param)
    store = new_project(base)
    assert main(add_argv(store.root, "alpha", source(base, "v1", seed=1))) == 0
    assert_killed(run_killed(point, add_argv(store.root, "alpha", source(base, "v2", seed=2))))
    return base, expected


@pytest.fixture
def killed(killed_add: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    base, expected = killed_add
    shutil.copytree(base, tmp_path / "base", symlinks=True)
    return tmp_path / "base", expected


def test_killed_add_leaves_git_cache_and_remote_on_one_version(killed: tuple[Path, str]) -> None:
    base, expected = killed
    root = base / "project"
    want = contents(base / ("v1" if expected == "old" else "v2"))
    # the remote alone: a clean clone (no workspace data, no cache) pulls exactly the committed version
    git(base, "clone", "-q", str(root), str(base / "clone"))
    assert contents(DataStore(base / "clone").pull("alpha").path) == want
    # the cache alone: with the remote gone, the project still pulls the committed version
    (base / "remote").rename(base / "remote-away")
    assert contents(DataStore(root).pull("alpha").path) == want


def test_killed_add_leaves_the_workspace_on_one_version(killed: tuple[Path, str]) -> None:
    base, expected = killed
    store = DataStore(base / "project")  # opening the store undoes, or finishes, the interrupted add
    root = store.root
    assert git(root, "show", "HEAD:data/alpha.dvc") == store.pointer("alpha").read_text().strip()
    assert git(root, "status", "--porcelain", "--untracked-files=no") == ""  # nothing staged or modified
    assert contents(root / "data" / "alpha") == contents(base / ("v1" if expected == "old" else "v2"))
    assert not (root / "data" / ".alpha.previous").exists()
    # the killed process's scratch folder (data/.staging-*) may be left, but empty: it was moved in whole
    assert [p for p in (root / "data").glob(".staging-*/**/*") if p.is_file()] == []


def test_rerun_of_a_killed_add_completes_with_the_new_version(killed: tuple[Path, str]) -> None:
    base, _ = killed
    root = base / "project"
    assert main(add_argv(root, "alpha", base / "v2")) == 0
    store = DataStore(root)
    assert store.md5("alpha") == store.md5("alpha", "HEAD")
    git(base, "clone", "-q", str(root), str(base / "clone"))
    assert contents(DataStore(base / "clone").pull("alpha").path) == contents(base / "v2")
    assert contents(root / "data" / "alpha") == contents(base / "v2")


def test_append_after_a_killed_add_builds_on_the_committed_version(killed: tuple[Path, str]) -> None:
    base, expected = killed
    root = base / "project"
    synthetic = Synthetic(seed=3)
    for index in range(3):
        save(synthetic.normal(), base / "extra" / f"extra{index}.png")
    argv = ["--root", str(root), "data", "add", "alpha", "--append", "--normal", str(base / "extra")]
    assert main(argv) == 0
    committed = contents(base / ("v1" if expected == "old" else "v2"))
    pulled = contents(DataStore(root).pull("alpha").path)
    assert pulled == committed | contents(base / "extra")


# ----------------------------------------------------------------------------- pull faults

@pytest.fixture
def project(tmp_path: Path) -> DataStore:
    """alpha and beta added and pushed; the snapshot cache empty."""
    store = new_project(tmp_path)
    for seed, line in enumerate(("alpha", "beta")):
        assert main(add_argv(store.root, line, source(tmp_path, line, seed))) == 0
    shutil.rmtree(store.root / SNAPSHOTS, ignore_errors=True)
    return store


def forget_from_cache(store: DataStore, line: str) -> None:
    """Remove the line's objects (files and listing) from the DVC cache: only the remote has them."""
    md5 = store.md5(line)
    for digest in [*listing(store, md5).values(), md5]:
        cache_object(store, digest).unlink()


def test_unreachable_remote_names_the_line_and_revision(project: DataStore) -> None:
    forget_from_cache(project, "alpha")
    (project.root.parent / "remote").rename(project.root.parent / "remote-away")
    rev = git(project.root, "rev-parse", "HEAD")
    with pytest.raises(DataVersionError, match=rf"'alpha' at revision {rev[:12]}.*remote .* is unreachable"):
        project.pull("alpha")
    assert leftovers(project, "alpha") == []
    assert project.pull("beta").path.is_dir()  # in the cache: no remote needed


def test_retrain_with_an_unreachable_remote_fails_that_line_only(project: DataStore, prefect_harness: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.retrain

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tables: list[str] = []  # the summary the flow prints (to its log)
    table = flows.retrain.summary_table
    monkeypatch.setattr(flows.retrain, "summary_table",
                        lambda results: tables.append(table(results)) or tables[-1])
    forget_from_cache(project, "alpha")
    (project.root.parent / "remote").rename(project.root.parent / "remote-away")
    assert main(["--root", str(project.root), "retrain", "alpha", "beta"]) == 1
    rows = {row.split("|")[1].strip(): row for row in tables[-1].splitlines()}
    assert "FAILED" in rows["alpha"] and "cannot pull product line 'alpha'" in rows["alpha"]
    assert "unreachable" in rows["alpha"]
    assert "FAILED" not in rows["beta"] and project.md5("beta")[:12] in rows["beta"]


def corrupt(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")


@pytest.mark.parametrize("fault", ["corrupt-in-cache", "corrupt-in-remote", "missing-in-cache-and-remote"])
def test_bad_object_is_named_and_never_makes_a_snapshot(project: DataStore, fault: str) -> None:
    md5 = project.md5("alpha")
    files = listing(project, md5)
    relpath = sorted(name for name in files if name.startswith("train/good/"))[1]
    digest = files[relpath]
    if fault == "corrupt-in-cache":
        corrupt(cache_object(project, digest))
    elif fault == "corrupt-in-remote":
        forget_from_cache(project, "alpha")
        corrupt(remote_object(project, digest))
    else:
        cache_object(project, digest).unlink()
        remote_object(project, digest).unlink()
    with pytest.raises(DataVersionError, match=rf"'alpha' at revision .*: 1 file\(s\).*{relpath}") as error:
        project.pull("alpha")
    why = "corrupt" if fault.startswith("corrupt") else "in neither the DVC cache nor the remote"
    assert why in str(error.value)
    assert leftovers(project, "alpha") == []  # no snapshot, partial or not, that a later pull would use
    if fault == "corrupt-in-cache":  # the corrupt copy left the cache: a retry gets a good one from remote
        assert contents(project.pull("alpha").path) == contents(project.root.parent / "alpha")


def test_disk_full_while_pulling_leaves_no_half_snapshot(project: DataStore) -> None:
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("cannot make a mount namespace here (unshare -rm) for a small tmpfs")
    snapshots = project.root / SNAPSHOTS
    snapshots.mkdir(parents=True)
    script = (f"mount -t tmpfs -o size=64k tmpfs {snapshots} || exit 99; "
              f"{sys.executable} -m flows.cli --root {project.root} data pull alpha; echo rc=$?; "
              f"find {snapshots} -mindepth 2 ! -name '*.lock'")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                            cwd=REPOSITORY)
    if result.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace: {result.stderr.strip()}")
    rev = git(project.root, "rev-parse", "HEAD")
    assert f"cannot pull product line 'alpha' at revision {rev[:12]}" in result.stderr
    assert "no space left on device" in result.stderr
    assert result.stdout.split("rc=")[1].splitlines() == ["1"], result.stdout  # and nothing left under it


PULL_KILLS = {
    "pull-killed-while-copying": KillPoint("dvc_objects.fs.local:LocalFileSystem.put_file", call=3),
    "pull-killed-while-verifying": KillPoint("flows.data.store:_file_md5", call=3),
}


@pytest.mark.parametrize("point", list(PULL_KILLS.values()), ids=list(PULL_KILLS))
def test_pull_killed_midway_leaves_nothing_a_later_pull_uses(project: DataStore, point: KillPoint) -> None:
    assert_killed(run_killed(point, ["--root", str(project.root), "data", "pull", "alpha"]))
    md5 = project.md5("alpha").removesuffix(".dir")
    assert md5 not in leftovers(project, "alpha")
    version = project.pull("alpha")
    assert contents(version.path) == contents(project.root.parent / "alpha")
    pulled = {p.relative_to(version.path).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
              for p in version.path.rglob("*") if p.is_file()}
    assert pulled == listing(project, version.md5)
    assert leftovers(project, "alpha") == [md5]  # the killed pull's partial copy is gone too


def test_concurrent_pulls_of_one_version_share_one_snapshot(project: DataStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.api import DVCFileSystem

    both_copying = threading.Barrier(2)
    get = DVCFileSystem.get

    def get_together(self: DVCFileSystem, *args: object, **kwargs: object) -> object:
        try:  # without a lock both pulls copy at once; with it the second waits for the first
            both_copying.wait(timeout=1)
        except threading.BrokenBarrierError:
            pass
        return get(self, *args, **kwargs)

    monkeypatch.setattr(DVCFileSystem, "get", get_together)
    results: list[object] = [None, None]

    def pull(index: int) -> None:
        try:
            results[index] = DataStore(project.root).pull("alpha").path
        except Exception as error:  # reported by the assertion below
            results[index] = error

    threads = [threading.Thread(target=pull, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[1] and isinstance(results[0], Path), results
    assert contents(results[0]) == contents(project.root.parent / "alpha")


def test_killed_add_of_a_new_line_is_undone_and_its_rerun_commits_the_line(tmp_path: Path) -> None:
    store = new_project(tmp_path)
    point = ADD_KILLS["data-add-before-git-commit"][0]  # git add has staged pointer, .gitignore, params.yaml
    folder = source(tmp_path, "gamma", seed=4)
    assert_killed(run_killed(point, add_argv(store.root, "gamma", folder)))
    assert git(store.root, "diff", "--cached", "--name-only") != ""
    store = DataStore(store.root)
    assert git(store.root, "diff", "--cached", "--name-only") == ""
    assert not store.pointer("gamma").exists() and not store.line_dir("gamma").exists()
    assert not (store.root / "data" / ".gitignore").exists()  # it held /gamma only
    # params.yaml kept the registration (SIGKILL skipped its restore): the rerun still commits it
    assert main(add_argv(store.root, "gamma", folder)) == 0
    assert lists_line(git(store.root, "show", "HEAD:params.yaml"), "gamma")
    assert git(store.root, "status", "--porcelain", "--", "params.yaml") == ""


def test_staging_removes_the_scratch_folders_of_killed_adds_of_its_line_only(tmp_path: Path) -> None:
    store = new_project(tmp_path)
    data = store.root / "data"
    stale, other = data / ".staging-alpha-k1lled_0" / "alpha", data / ".staging-alpha-2-running1" / "alpha-2"
    for folder in (stale, other):
        save(Synthetic().normal(), folder / "x.png")
    with store.staging("alpha") as scratch:
        assert not stale.parent.exists() and other.is_dir()
        shutil.copytree(source(tmp_path, "alpha", seed=5), scratch / "alpha")
        version = store.add("alpha", scratch / "alpha", min_train_images=5)  # the lock is held already
    assert not scratch.exists() and version.md5 == store.md5("alpha", "HEAD")


def test_adds_of_two_new_lines_at_once_both_land_in_git_params_and_gitignore(tmp_path: Path) -> None:
    store = new_project(tmp_path)
    lines = ("gamma", "delta")  # new lines: each add registers its line in the shared params.yaml
    adds = [children.start(add_argv(store.root, line, source(tmp_path, line, seed)))
            for seed, line in enumerate(lines, start=10)]
    results = [add.wait(timeout=300) for add in adds]
    assert [result.returncode for result in results] == [0, 0], [result.stderr for result in results]
    for line in lines:
        assert lists_line(git(store.root, "show", "HEAD:params.yaml"), line)
        assert store.md5(line, "HEAD") == store.md5(line)
    assert {"/gamma", "/delta"} <= set((store.root / "data" / ".gitignore").read_text().splitlines())
    assert git(store.root, "status", "--porcelain", "--", "data", "params.yaml") == ""
