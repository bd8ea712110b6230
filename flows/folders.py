"""Put a new folder in place of an old one without ever leaving neither: the one filesystem step
shared by data versions (flows.data) and exports (flows.export)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
