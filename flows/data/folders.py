"""Filesystem steps shared by data versions (flows.data.store), exports (flows.export) and the registry:
put a new folder in place of an old one without ever leaving neither, replace a file's text so that
readers see the old text or the new, never part of it, and lock a file."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s text in one rename: a concurrent reader sees the old text or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def backup_of(target: Path) -> Path:
    """Where an earlier ``target`` waits while a new one is swapped in: ``.<name>.previous``."""
    return target.with_name(f".{target.name}.previous")


def set_aside(target: Path) -> Path:
    """Move ``target`` (if any) to its backup; a backup left by a finished swap is dropped first."""
    backup = backup_of(target)
    if backup.exists():
        shutil.rmtree(backup)
    if target.exists():
        target.rename(backup)
    return backup


def put_back(target: Path) -> None:
    """Undo a swap: the backup, if there is one, becomes ``target`` again, whatever ``target`` holds
    now (nothing, part of the new folder, or all of it). Safe to repeat if interrupted."""
    backup = backup_of(target)
    if backup.exists():
        if target.exists():
            shutil.rmtree(target)
        backup.rename(target)


@contextmanager
def swapped_in(new: Path, target: Path) -> Iterator[Path]:
    """Move folder ``new`` to ``target``; an earlier ``target`` waits aside as ``.<name>.previous``
    until the block succeeds, and is put back if moving or the block fails."""
    backup = set_aside(target)
    try:
        shutil.move(str(new), target)
        yield target
    except BaseException:
        if not backup.exists() and target.exists():
            shutil.rmtree(target)
        put_back(target)
        raise
    if backup.exists():
        shutil.rmtree(backup)


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``path`` (created if need be), released when the block ends or the
    process dies, even by SIGKILL; with ``wait`` False, yields False at once if it is taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)
