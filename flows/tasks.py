"""Prefect tasks that more than one flow runs (retrain, tune), and the retry policy they share.

A task that talks to a remote (DVC, MLflow) is retried after the delays in ``RETRY_DELAYS_S``;
``PADIM_RETRY_DELAYS_S`` (comma-separated seconds, e.g. ``0,0`` in tests) sets them.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from .config import LineParams
from .data.store import DataStore, DataVersion
from .data.validation import validate_line

RUNS = Path(".padim") / "runs"  # a fit's files, under the project: .padim/runs/<cache key>/
RETRY_DELAYS_S = [float(delay) for delay in os.environ.get("PADIM_RETRY_DELAYS_S", "2,10").split(",")]
# how a task that calls a remote is run: retried after those delays, its result never cached
REMOTE_CALL = {"retries": len(RETRY_DELAYS_S), "retry_delay_seconds": RETRY_DELAYS_S,
               "cache_policy": NO_CACHE}


@task(name="pull data", **REMOTE_CALL)
def pull_data(root: Path, line: str, rev: str | None) -> DataVersion:
    version = DataStore(root).pull(line, rev)
    get_run_logger().info("%s: data version %s at %s", line, version.md5, version.rev[:12])
    return version


@task(name="validate data", cache_policy=NO_CACHE)
def validate_data(data: DataVersion, params: LineParams) -> None:
    validate_line(data.path, params.data.min_train_images, params.data.min_validation_images)
