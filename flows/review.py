"""What operators should look at on a line, from its production score log: the flagged images
(highest score first) and the passed images nearest the threshold (where the model is least sure).
Each image appears once, as last scored. ``padim-mlops review LINE --out FILE.csv`` writes them
with an empty ``verdict`` column: the sheet an operator fills in (normal or defect).
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

FLAGGED, NEAR = "flagged", "passed, near the threshold"
THRESHOLD = 0.5  # where the normalised score puts every model's threshold
COLUMNS = ("image", "image_digest", "score", "label", "model_version", "time", "reason", "verdict")
_AGO = re.compile(r"(\d+)([hd])")


@dataclass(frozen=True)
class ReviewItem:
    image: str  # its path, or the caller's id
    image_digest: str
    score: float
    label: int
    model_version: str
    time: str
    reason: str


def review_items(log: pa.Table, limit: int) -> list[ReviewItem]:
    """Up to ``limit`` flagged images, highest score first, then up to ``limit`` passed images,
    nearest the threshold first; each image (by digest) as it was last scored."""
    latest: dict[str, dict] = {}
    for row in log.sort_by("time").to_pylist():
        latest[row["image_digest"]] = row
    rows = list(latest.values())
    flagged = sorted((row for row in rows if row["label"] == 1), key=lambda row: -row["score"])
    near = sorted((row for row in rows if row["label"] == 0), key=lambda row: THRESHOLD - row["score"])
    return [_item(row, FLAGGED) for row in flagged[:limit]] + [_item(row, NEAR) for row in near[:limit]]


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``, ``7d`` (ago) or an ISO 8601 date or time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    ago = _AGO.fullmatch(text)
    if ago:
        amount, unit = int(ago.group(1)), ago.group(2)
        return now - (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give a time ago (24h, 7d) or an ISO date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def write_sheet(items: list[ReviewItem], path: Path) -> None:
    """The review sheet: one row per image, the verdict column left for the operator."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for item in items:
            writer.writerow(asdict(item) | {"verdict": ""})


def _item(row: dict, reason: str) -> ReviewItem:
    return ReviewItem(row["source"], row["image_digest"], float(row["score"]), int(row["label"]),
                      row["model_version"], row["time"].isoformat(timespec="seconds"), reason)
