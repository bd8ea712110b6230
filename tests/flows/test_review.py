"""padim-mlops review: what operators should look at, from the line's production score log."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.cli import main
from flows.review import FLAGGED, NEAR, parse_since, review_items
from padim_plugin.score_log import ScoreLog, ScoreRow

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
PARAMS = "lines:\n  alpha: {}\n"
# (minutes ago, image, score, label); "b" was flagged an hour ago and passed since
SCORED = [(60, "b", 0.95, 1), (50, "a", 0.9, 1), (40, "c", 0.7, 1), (30, "d", 0.1, 0), (20, "e", 0.45, 0),
          (10, "f", 0.3, 0), (5, "b", 0.2, 0)]


def logged(root: Path) -> ScoreLog:
    log = ScoreLog(root / ".padim" / "production")
    log.append("alpha", [ScoreRow(NOW - timedelta(minutes=ago), "3", "md5", score, label, 12.0,
                                  f"digest-{image}", f"cam/{image}.png")
                         for ago, image, score, label in SCORED])
    return log


def test_flagged_images_come_highest_first_then_passed_ones_nearest_the_threshold(tmp_path: Path) -> None:
    items = review_items(logged(tmp_path).read("alpha"), limit=3)
    assert [(item.image, item.reason) for item in items] == [
        ("cam/a.png", FLAGGED), ("cam/c.png", FLAGGED),  # b passed when last scored
        ("cam/e.png", NEAR), ("cam/f.png", NEAR), ("cam/b.png", NEAR)]


def test_review_writes_a_sheet_with_an_empty_verdict_for_each_image_scored_since(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS)
    logged(tmp_path)
    since = (NOW - timedelta(minutes=25)).isoformat()
    sheet_path = tmp_path / "r.csv"
    assert main(["--root", str(tmp_path), "review", "alpha", "--since", since, "--out", str(sheet_path)]) == 0
    with sheet_path.open() as stream:
        sheet = list(csv.DictReader(stream))
    assert [(row["image"], row["verdict"]) for row in sheet] == [("cam/e.png", ""), ("cam/f.png", ""),
                                                                 ("cam/b.png", "")]
    assert "fill in 'verdict'" in capsys.readouterr().out


def test_a_since_that_is_no_time_is_refused_naming_it(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "params.yaml").write_text(PARAMS)
    assert main(["--root", str(tmp_path), "review", "alpha", "--since", "last week"]) == 1
    assert "--since 'last week': give a time ago (24h, 7d) or an ISO date or time" in capsys.readouterr().err
    assert parse_since("7d", NOW) == NOW - timedelta(days=7)
    assert parse_since("2026-12-01", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
