"""The production score log: whole rows or none, partitioned by line and day, any number of writers."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from padim_plugin.score_log import ScoreLog, ScoreLogWriter, ScoreRow, scored_rows

NOW = datetime(2026, 12, 2, 23, 59, 59, 500000, tzinfo=UTC)


def rows(n: int, source: str = "cam", start: datetime = NOW) -> list[ScoreRow]:
    return [ScoreRow(start + timedelta(seconds=i), "7", "abc123", 0.25 * i, i % 2, 41.5,
                     f"digest-{source}{i}", f"{source}-{i}") for i in range(n)]


def test_rows_read_back_as_written_in_a_folder_per_line_and_day(tmp_path: Path) -> None:
    log = ScoreLog(tmp_path / "log")
    written = rows(3)  # 23:59:59.5, then 00:00:00.5 and 00:00:01.5 of the next day
    log.append("brick", written)
    log.append("gravel", rows(1, "other"))
    table = log.read("brick")
    assert table.column("source").to_pylist() == ["cam-0", "cam-1", "cam-2"]
    assert table.column("time").to_pylist() == [row.time for row in written]
    assert table.column("score").to_pylist() == [0.0, 0.25, 0.5]
    assert table.column("day").to_pylist() == ["2026-12-02", "2026-12-03", "2026-12-03"]
    assert table.column("image").to_pylist() == [None] * 3
    files = (tmp_path / "log").rglob("*.parquet")
    folders = sorted(str(path.parent.relative_to(tmp_path / "log")) for path in files)
    assert folders == ["line=brick/day=2026-12-02", "line=brick/day=2026-12-03", "line=gravel/day=2026-12-02"]
    assert log.read(since=NOW + timedelta(seconds=1)).column("source").to_pylist() == ["cam-1", "cam-2"]
    # what a team's own tools read: a hive-partitioned Parquet dataset
    plain = ds.dataset(tmp_path / "log", format="parquet", partitioning="hive").to_table()
    assert plain.num_rows == 4


def test_a_writer_batches_rows_into_files_and_writes_the_rest_on_close(tmp_path: Path) -> None:
    log = ScoreLog(tmp_path / "log")
    with ScoreLogWriter(log, "brick", batch_rows=4) as writer:
        for start in range(0, 10, 2):
            writer.add(rows(2, f"b{start}", start=NOW - timedelta(hours=1)))  # one day
        assert log.read().num_rows == 8  # two files of four; two rows still buffered
    assert log.read().num_rows == 10
    assert len(list((tmp_path / "log").rglob("*.parquet"))) == 3


def test_rows_are_written_once_the_oldest_has_waited_max_wait_s(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 6.0, 10.5, 10.5, 11.0]).__next__  # what time.monotonic answers, call by call
    monkeypatch.setattr("padim_plugin.score_log.time.monotonic", clock)
    log = ScoreLog(tmp_path / "log")
    writer = ScoreLogWriter(log, "brick", batch_rows=1000, max_wait_s=10.0)
    writer.add(rows(1, "a"))  # arrives at 0 s
    writer.add(rows(1, "b"))  # at 6 s: the oldest has waited 6 s
    assert log.read().num_rows == 0
    writer.add(rows(1, "c"))  # at 10.5 s: the oldest has waited 10.5 s, all three are written
    assert log.read().column("source").to_pylist() == ["a-0", "b-0", "c-0"]
    writer.add(rows(1, "d"))  # a new oldest, at 10.5 s; 0.5 s later it still waits
    assert log.read().num_rows == 3


def test_rows_that_fail_to_be_written_wait_for_the_next_write(tmp_path: Path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log's folder should be")
    writer = ScoreLogWriter(ScoreLog(blocker), "brick", batch_rows=2)
    writer.add(rows(1, "a"))
    with pytest.raises(OSError):
        writer.add(rows(1, "b"))
    blocker.unlink()
    writer.close()
    assert ScoreLog(blocker).read().column("source").to_pylist() == ["a-0", "b-0"]


def test_an_image_is_named_by_its_pixels_and_kept_as_png_when_asked(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    kept, plain = (scored_rows([image], ["cam"], [0.7], [1], "3", "md5", 9.5, keep)[0]
                   for keep in (True, False))
    by_hand = hashlib.sha256(b"(12, 16, 3)" + image.tobytes()).hexdigest()
    assert kept.image_digest == plain.image_digest == by_hand
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kept.image))), image) and plain.image is None
    ScoreLog(tmp_path / "log").append("brick", [kept])
    assert ScoreLog(tmp_path / "log").read().column("image").to_pylist() == [kept.image]


def test_a_time_without_zone_and_a_line_that_cannot_name_a_folder_are_refused(tmp_path: Path) -> None:
    log = ScoreLog(tmp_path / "log")
    with pytest.raises(ValueError, match="has no time zone"):
        log.append("brick", [ScoreRow(datetime(2026, 1, 1), "1", "r", 0.1, 0, 1.0, "d", "s")])
    with pytest.raises(ValueError, match=r"line name '\.\./x' cannot name a log partition"):
        log.append("../x", rows(1))
    assert not (tmp_path / "log").exists() or log.read().num_rows == 0


CHILD = """
import os, signal, sys
from datetime import UTC, datetime
import pyarrow.parquet as pq
from padim_plugin.score_log import ScoreLog, ScoreRow
log, mode = ScoreLog(sys.argv[1]), sys.argv[2]
row = lambda i: ScoreRow(datetime.now(UTC), "1", "r", 0.5, 1, 2.0, f"d{i}", f"{os.getpid()}-{i}")
if mode == "torn":
    real = pq.write_table
    def torn(table, where, **kwargs):  # half a file on disk, then the power goes
        real(table, where, **kwargs)
        with open(where, "r+b") as stream:
            stream.truncate(os.path.getsize(where) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    pq.write_table = torn
    log.append("brick", [row(i) for i in range(5)])
else:
    for batch in range(int(mode)):
        log.append("brick", [row(batch * 5 + i) for i in range(5)])
"""


def child(log: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(log), mode])


def test_a_writer_killed_mid_write_leaves_nothing_that_reads_as_data(tmp_path: Path) -> None:
    log = ScoreLog(tmp_path / "log")
    log.append("brick", rows(2))
    assert child(tmp_path / "log", "torn").wait(timeout=120) == -9
    partial = list((tmp_path / "log").rglob("*.partial"))
    assert [path.name.startswith(".") for path in partial] == [True]  # killed there: a hidden file
    assert log.read().column("source").to_pylist() == ["cam-0", "cam-1"]
    log.append("brick", rows(1, "after"))
    assert log.read().num_rows == 3


def test_two_processes_appending_at_once_lose_no_row(tmp_path: Path) -> None:
    writers = [child(tmp_path / "log", "40") for _ in range(2)]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    sources = ScoreLog(tmp_path / "log").read("brick").column("source").to_pylist()
    assert len(sources) == len(set(sources)) == 2 * 40 * 5
