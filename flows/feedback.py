"""Operators' verdicts back into a line's data (active learning): ``padim-mlops feedback LINE SHEET``.

The sheet is the one ``padim-mlops review --out`` writes, its verdicts filled in, or any CSV with
an ``image`` column (a path, or the digest the production log names the image by) or an
``image_digest`` column, and a ``verdict`` column: ``normal`` (a false alarm, or a pass confirmed)
or ``defect``. Optional columns: ``defect_kind`` (default ``defect``) and ``reviewed_by`` (default:
who runs the command). Rows without a verdict are left for later.

Each image is the file the row names, else the image the production log kept under its digest.
Confirmed images become the line's next data version through the ``data add --append`` path:
roles by the stable hash, duplicates skipped, journalled, committed with the pointer. Every image
added gets a row in that version's ``provenance.csv``: the verdict, who gave it and when, and the
model version that scored it (with its score and time) as the production log recorded it. Images,
verdicts and provenance land in one data version, or none do.
"""

from __future__ import annotations

import csv
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from padim_plugin.images import ImageDecodeError, decode_image
from padim_plugin.mvtec import NORMAL
from padim_plugin.score_log import ScoreLog, pixels_digest

from .config import LineParams
from .data.adding import add_line
from .data.layout import DEFAULT_DEFECT_KIND, Provenance, StagingReport, new_image
from .data.store import DataVersion
from .data.validation import DataValidationError
from .registry.audit import actor

VERDICTS = ("normal", "defect")
PROVENANCE_COLUMNS = ("verdict", "defect_kind", "reviewed_by", "reviewed_at", "model_version", "score",
                      "scored_at", "image_digest", "source")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Verdict:
    """One reviewed row of a sheet."""

    row: int  # its line in the sheet, for messages
    image: str  # a path, or ""
    digest: str  # the production log's image digest, or ""
    verdict: str
    defect_kind: str
    reviewed_by: str


@dataclass(frozen=True)
class FeedbackReport:
    reviewed: int  # rows with a verdict
    left: int  # rows without one yet
    staging: StagingReport
    version: DataVersion


def read_sheet(path: Path, reviewer: str) -> tuple[list[Verdict], int, list[tuple[int, str]]]:
    """The sheet's reviewed rows, how many rows wait for a verdict, and each bad row's problem
    (by its line in the sheet)."""
    if not path.is_file():
        raise FileNotFoundError(f"feedback sheet {path} does not exist")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        columns = set(reader.fieldnames or ())
        if "verdict" not in columns or not columns & {"image", "image_digest"}:
            raise ValueError(f"{path}: needs a 'verdict' column and an 'image' or 'image_digest' column;"
                             f" it has {sorted(columns)}")
        rows = list(enumerate(reader, start=2))
    verdicts, left, problems = [], 0, []
    for number, row in rows:
        verdict = (row.get("verdict") or "").strip().lower()
        if not verdict:
            left += 1
            continue
        image = (row.get("image") or "").strip()
        digest = (row.get("image_digest") or "").strip().lower()
        if not digest and _DIGEST.fullmatch(image.lower()):
            image, digest = "", image.lower()
        kind = (row.get("defect_kind") or "").strip() or DEFAULT_DEFECT_KIND
        if verdict not in VERDICTS:
            problems.append((number, f"verdict {verdict!r} is neither {' nor '.join(VERDICTS)}"))
        elif not image and not digest:
            problems.append((number, "names no image (give its path or its digest)"))
        elif verdict == "defect" and (kind == NORMAL or not _KIND.fullmatch(kind)):
            problems.append((number, f"defect kind {kind!r} cannot name a folder (letters, digits, _ -;"
                                     f" not {NORMAL!r})"))
        else:
            verdicts.append(Verdict(number, image, digest, verdict, kind if verdict == "defect" else "",
                                    (row.get("reviewed_by") or "").strip() or reviewer))
    return verdicts, left, problems


def add_feedback(root: Path, params: LineParams, sheet: Path, log: ScoreLog | None,
                 reviewer: str | None = None) -> FeedbackReport:
    """Append the sheet's confirmed images to the line's data as its next version (see the module
    docstring). Nothing is written if any row's image cannot be found or read."""
    verdicts, left, problems = read_sheet(sheet, reviewer or actor(""))
    if not verdicts and not problems:
        raise ValueError(f"{sheet}: no row has a verdict yet (fill in 'verdict': normal or defect)")
    located = []
    for verdict in verdicts:
        try:
            located.append((verdict, *_locate(verdict, sheet)))
        except (FileNotFoundError, ImageDecodeError, ValueError) as error:
            problems.append((verdict.row, str(error)))
    logged = _last_scored(log, params.name, {digest for _, _, digest in located})
    reviewed_at = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="padim-feedback-") as scratch:
        incoming, rows = [], {}
        for verdict, image, digest in located:
            scored = logged.get(digest)
            if image is None:
                try:
                    image = _kept_image(verdict, scored, Path(scratch))
                except FileNotFoundError as error:
                    problems.append((verdict.row, str(error)))
                    continue
            name = f"{digest[:16]}{image.suffix.lower()}"  # one name per content: no clashes across days
            incoming.append(new_image(image, verdict.defect_kind or NORMAL, params.data.split, name=name))
            rows[str(image)] = {
                "verdict": verdict.verdict, "defect_kind": verdict.defect_kind,
                "reviewed_by": verdict.reviewed_by, "reviewed_at": reviewed_at,
                "model_version": scored["model_version"] if scored else "",
                "score": f"{scored['score']:.6g}" if scored else "",
                "scored_at": scored["time"].isoformat(timespec="seconds") if scored else "",
                "image_digest": digest, "source": verdict.image or (scored["source"] if scored else ""),
            }
        if problems:
            listed = [f"{sheet}, line {row}: {text}" for row, text in sorted(problems)]
            raise DataValidationError(str(sheet), listed)
        staging, version = add_line(root, params.name, incoming, params.data, append=True,
                                    provenance=Provenance(PROVENANCE_COLUMNS, rows))
    return FeedbackReport(len(verdicts), left, staging, version)


def _last_scored(log: ScoreLog | None, line: str, digests: set[str]) -> dict[str, dict]:
    """The production log's last row of each of these images, by digest."""
    if log is None or not digests:
        return {}
    return {row["image_digest"]: row for row in log.read(line, digests=digests).to_pylist()}  # by time


def _locate(verdict: Verdict, sheet: Path) -> tuple[Path | None, str]:
    """The file the row names (as given, or beside the sheet) and its pixels' digest; or no file
    and the row's digest, when the row names the image by digest alone."""
    if not verdict.image:
        return None, verdict.digest
    for candidate in (Path(verdict.image), sheet.parent / verdict.image):
        if candidate.is_file():
            digest = pixels_digest(decode_image(candidate))
            if verdict.digest and digest != verdict.digest:
                raise ValueError(f"{candidate}: its pixels' digest {digest[:12]}... is not the row's"
                                 f" image_digest {verdict.digest[:12]}...")
            return candidate, digest
    if not verdict.digest:
        raise FileNotFoundError(f"image {verdict.image} does not exist (nor beside the sheet)")
    return None, verdict.digest


def _kept_image(verdict: Verdict, scored: dict | None, scratch: Path) -> Path:
    """The image the production log kept for this row's digest, written to ``scratch``."""
    named = verdict.image or verdict.digest
    if scored is None:
        raise FileNotFoundError(f"image {named} is not a file, and the production log has no image with"
                                f" digest {verdict.digest[:12]}...")
    if scored["image"] is None:
        raise FileNotFoundError(f"image {named} is not a file, and the production log kept no copy of it"
                                " (production.keep_images is false): give its path")
    kept = scratch / f"{verdict.digest}.png"
    kept.write_bytes(scored["image"])
    return kept
