"""Put a new folder in place of an old one without ever leaving neither: the one filesystem step
shared by data versions (flows.data) and exports (flows.export)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def swapped_in(new: Path, target: Path) -> Iterator[Path]:
    """Move folder ``new`` to ``target``; an earlier ``target`` waits aside as ``.<name>.previous``
    until the block succeeds, and is put back if moving or the block fails."""
    backup = target.with_name(f".{target.name}.previous")
    if backup.exists():
        shutil.rmtree(backup)
    if target.exists():
        target.rename(backup)
    try:
        shutil.move(str(new), target)
        yield target
    except BaseException:
        if target.exists():
            shutil.rmtree(target)
        if backup.exists():
            backup.rename(target)
        raise
    if backup.exists():
        shutil.rmtree(backup)
