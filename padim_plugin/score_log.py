"""The production score log: one row per image a line's model scored in production, kept as
Parquet partitioned by line and day, in a folder or an object store (a pyarrow filesystem URI such
as ``s3://bucket/prefix``), so that a team can query it with pyarrow, pandas, DuckDB or Spark.

Contract:
- A write is one file of whole rows: written under a hidden name, then moved to
  ``line=<line>/day=<YYYY-MM-DD>/<time>-<pid>-<random>.parquet``. Readers (``ScoreLog.read``, and
  pyarrow datasets by default) skip hidden files, so a writer killed mid-write leaves nothing that
  reads as data.
- Writers never share a file, so any number of processes may append at once.
- ``ScoreLogWriter`` batches rows: a file per ``batch_rows`` rows, or once the oldest waiting row
  is ``max_wait_s`` old, and on ``close``; threads may share one.
- An image is named by the digest of its pixels (``pixels_digest``), the same whichever path and
  lossless encoding brought it; a log that keeps images keeps them as PNG.

Needs pyarrow, numpy and Pillow only (no torch, no MLOps package), so that the MLflow pyfunc and
the exported runtime (``padim_plugin.runtime.score_and_log``) can use it where they run.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import re
import secrets
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .image_statistics import STATISTICS, image_statistics
from .images import encode_png

# the columns of each file; ``line`` and ``day`` come from the partition folders
SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")),
    ("model_version", pa.string()),  # the registered version, or what the caller knows of it
    ("data_rev", pa.string()),  # the data version the model was fitted on (its DVC md5)
    ("score", pa.float32()),  # normalised: the image threshold sits at 0.5
    ("label", pa.int8()),  # 1: flagged
    ("threshold", pa.float32()),  # the image threshold in raw score units
    ("image_digest", pa.string()),  # pixels_digest of the image
    ("source", pa.string()),  # the caller's id or the image's path
    ("image", pa.binary()),  # the image as PNG, when the log keeps images for review; else null
    # padim_plugin.image_statistics of the image, for input-drift monitoring (null in older logs)
    *[(name, pa.float32()) for name in STATISTICS],
])
PARTITIONING = ds.partitioning(pa.schema([("line", pa.string()), ("day", pa.string())]), flavor="hive")
_SAFE_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ScoreRow:
    """What the log keeps of one scored image."""

    time: datetime
    model_version: str
    data_rev: str
    score: float
    label: int
    threshold: float
    image_digest: str
    source: str
    image: bytes | None = None
    width: float | None = None
    height: float | None = None
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None


def pixels_digest(image: np.ndarray) -> str:
    """sha256 of an image's shape and uint8 RGB pixels (a grey image as its RGB expansion, as the
    model sees it)."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        pixels = np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=-1)
    pixels = np.ascontiguousarray(pixels)
    return hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()


def scored_rows(images: Sequence[np.ndarray], sources: Sequence[str], scores: Sequence[float],
                labels: Sequence[int], model_version: str, data_rev: str, threshold: float,
                keep_images: bool) -> list[ScoreRow]:
    """The rows of one scored batch, all at this moment."""
    now = datetime.now(UTC)
    return [ScoreRow(now, model_version, data_rev, float(score), int(label), threshold, pixels_digest(image),
                     source, encode_png(image) if keep_images else None, **image_statistics(image))
            for image, source, score, label in zip(images, sources, scores, labels, strict=True)]


class ScoreLog:
    """The log at ``location``: a folder, or a URI pyarrow opens (``s3://...``, ``file://...``)."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        if "://" in text:
            self.filesystem, self.root = pafs.FileSystem.from_uri(text)
        else:
            self.filesystem, self.root = pafs.LocalFileSystem(), str(Path(text).resolve())
        self.location = text

    def append(self, line: str, rows: Sequence[ScoreRow]) -> list[str]:
        """Write ``rows`` as one file per day they fall on; returns the files' paths."""
        if not _SAFE_LINE.fullmatch(line):
            raise ValueError(f"line name {line!r} cannot name a log partition (letters, digits, _ . -)")
        by_day: dict[str, list[ScoreRow]] = {}
        for row in rows:
            by_day.setdefault(_utc(row.time).strftime("%Y-%m-%d"), []).append(row)
        return [self._write(f"{self.root}/line={line}/day={day}", day_rows)
                for day, day_rows in by_day.items()]

    def read(self, line: str | None = None, since: datetime | None = None,
             digests: Collection[str] | None = None) -> pa.Table:
        """Every row (of ``line``, from ``since`` on, of images with these ``digests``), with
        ``line`` and ``day`` columns."""
        try:
            dataset = ds.dataset(self.root, filesystem=self.filesystem, format="parquet",
                                 partitioning=PARTITIONING, schema=_with_partitions())
        except FileNotFoundError:
            return _with_partitions().empty_table()
        conditions = []
        if line is not None:
            conditions.append(ds.field("line") == line)
        if since is not None:
            conditions.append(ds.field("time") >= pa.scalar(_utc(since), pa.timestamp("us", tz="UTC")))
        if digests is not None:
            conditions.append(ds.field("image_digest").isin(sorted(digests)))
        condition = functools.reduce(operator.and_, conditions) if conditions else None
        return dataset.to_table(filter=condition).sort_by("time")

    def _write(self, folder: str, rows: list[ScoreRow]) -> str:
        self.filesystem.create_dir(folder, recursive=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        hidden, final = f"{folder}/.{name}.partial", f"{folder}/{name}"
        columns = {field.name: [getattr(row, field.name) for row in rows] for field in fields(ScoreRow)}
        columns["time"] = [_utc(time) for time in columns["time"]]
        pq.write_table(pa.Table.from_pydict(columns, schema=SCHEMA), hidden, filesystem=self.filesystem)
        self.filesystem.move(hidden, final)  # a rename in a folder; on S3 the object appears whole
        return final


class ScoreLogWriter:
    """Rows of one line, buffered: written ``batch_rows`` at a time, or when the oldest has waited
    ``max_wait_s`` (checked as rows arrive), and on ``close``."""

    def __init__(self, log: ScoreLog, line: str, batch_rows: int = 256, max_wait_s: float = 60.0) -> None:
        self.log, self.line, self.batch_rows, self.max_wait_s = log, line, batch_rows, max_wait_s
        self._rows: list[ScoreRow] = []
        self._oldest = 0.0
        self._lock = threading.RLock()  # a stop signal's flush may arrive while this thread holds it

    def add(self, rows: Sequence[ScoreRow]) -> None:
        with self._lock:
            if not self._rows:
                self._oldest = time.monotonic()
            self._rows.extend(rows)
            due = len(self._rows) >= self.batch_rows or time.monotonic() - self._oldest >= self.max_wait_s
            if due:
                self.flush()

    def flush(self) -> None:
        """Write every waiting row; rows that fail to be written wait for the next write."""
        with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                self.log.append(self.line, rows)
            except BaseException:
                self._rows[:0] = rows
                raise

    def write_through(self) -> None:
        """Write what waits, and every later row as it arrives: for a process about to stop."""
        self.batch_rows = 1
        self.flush()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ScoreLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _utc(time: datetime) -> datetime:
    if time.tzinfo is None:
        raise ValueError(f"time {time.isoformat()} has no time zone: log aware times (UTC)")
    return time.astimezone(UTC)


def _with_partitions() -> pa.Schema:
    return SCHEMA.append(pa.field("line", pa.string())).append(pa.field("day", pa.string()))
