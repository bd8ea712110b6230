"""The data-add transaction: check the remote, stage the incoming images in the line's layout in a
scratch folder, then hand them to the DataStore (validate, dvc add, push, commit only what it writes).

Nothing is written unless the DVC remote answers and exists: a remote folder that moved away must
not silently become a fresh remote holding only the newest version, so starting a new remote takes
``create_remote``. An append builds on the committed version, which must be complete on the remote.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataParams
from .layout import Incoming, Provenance, StagingReport, record_provenance, stage
from .store import DataStore, DataVersion, DataVersionError
from .validation import DataValidationError


def add_line(root: Path, line: str, incoming: list[Incoming], data: DataParams, append: bool = False,
             replace: bool = False, commit: bool = True, create_remote: bool = False,
             provenance: Provenance | None = None) -> tuple[StagingReport, DataVersion]:
    """Add ``incoming`` as the next version of ``line`` (with ``append``: the committed version
    plus these images, existing roles kept); returns what was staged and the new version. Images
    that ``provenance`` describes get their rows in the version's provenance.csv."""
    store = DataStore(root)
    store.check_remote(create_remote)
    previous = None
    if append:
        if store.md5(line) != store.md5(line, "HEAD"):
            msg = (f"{store.pointer(line)} differs from the committed version: commit it first, since"
                   " --append builds on the committed version")
            raise ValueError(msg)
        missing = store.missing_on_remote(line, "HEAD")
        if missing:
            name, url = store.remote()
            msg = (f"the DVC remote {name!r} ({url}) lacks {len(missing)} file(s) of {line}'s committed"
                   f" version: push them ('dvc push -r {name} data/{line}.dvc') before appending to it")
            raise DataVersionError(msg)
        previous = store.pull(line).path
    with store.staging(line) as scratch:  # the project's add turn: one at a time, killed ones undone first
        sources = {str(scratch / line): f"new version of {line}"}
        try:
            report = stage(incoming, scratch / line, previous, replace)
            sources |= report.sources
            if provenance is not None:
                record_provenance(scratch / line, report, provenance)
            version = store.add(line, scratch / line, min_train_images=data.min_train_images,
                                min_validation_images=data.min_validation_images, commit=commit)
        except DataValidationError as error:
            raise error.renamed(sources) from None
    return report, version
