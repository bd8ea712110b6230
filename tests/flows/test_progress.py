"""Long steps say how far they are: images done out of the total with the time elapsed, and which
lines a retrain still waits for."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from prefect import flow, task

from flows.model import progress
from flows.model.fit import embed_statistics
from flows.model.predictions import predict_role
from flows.retrain import wait_reporting

from ..fits import TINY, Fit
from ..synthetic import write_mvtec_folder


def counts(caplog: pytest.LogCaptureFixture, what: str) -> list[int]:
    """The image counts of the progress lines about ``what``, in order."""
    pattern = re.compile(rf"^line: (\d+)(?:/\d+)? {what}(?:, \d+ s| in \d+\.\d s)$")
    return [int(match[1]) for record in caplog.records if (match := pattern.match(record.getMessage()))]


def test_a_fit_reports_its_train_images_as_they_stream(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line per batch
    line = write_mvtec_folder(tmp_path / "line", 5, 1, 1)  # batches of 4: 4, then 5 of 5
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        statistics = embed_statistics(TINY, line, tmp_path / "work")
    assert counts(caplog, "train images embedded") == [4, 5]
    assert statistics.n_samples == 5


def test_scoring_a_role_ends_with_its_image_count(tiny_fit: Fit, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        predictions = predict_role(tiny_fit.model, tiny_fit.params, tiny_fit.line, "test", tmp_path)
    assert counts(caplog, "test images scored") == [len(predictions.labels)]


@task
def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def two_lines_of_which_one_is_slow() -> None:
    futures = [sleep_then_return.submit(0.0), sleep_then_return.submit(3.0)]
    wait_reporting(futures, ["fast", "slow"], every_s=0.5)


def test_a_retrain_says_which_lines_it_still_waits_for(prefect_harness: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        two_lines_of_which_one_is_slow()
    waiting = [record.getMessage() for record in caplog.records if "waiting on" in record.getMessage()]
    assert waiting, "no progress line while the slow line ran"
    assert re.fullmatch(r"1/2 line\(s\) done, \d+ s; waiting on slow", waiting[-1])
