"""Shared fixtures: the session's Prefect API, a tiny fitted line, and a store per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# No test may download weights: hub lookups fail at once instead of retrying for a minute.
# Set before timm / huggingface_hub are imported, since they read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
# Prefect keeps its database, cached results and logs under PREFECT_HOME: never the user's.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="padim-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# a task that fails against a remote is retried at once: the tests wait for no backoff
os.environ["PADIM_RETRY_DELAYS_S"] = "0,0"
# pytest-xdist runs one worker per core: each computes on one thread (torch reads this as it loads;
# the processes the tests start inherit it)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# MLflow and Prefect attach log handlers to the sys.stderr of the moment they are first imported
# (Prefect lazily: its logging is set up with prefect.main): import them before any test's capsys
# swaps sys.stderr, since a handler left on a closed capture breaks every later log record.
import mlflow  # noqa: F401
import prefect.main  # noqa: F401
import pytest

from flows.output import EXPECTED_WARNINGS, expect_library_warnings

expect_library_warnings()  # before the imports below, which raise some of them

from .fits import OPTIONS, TINY, Fit, fit_tiny_line, with_options  # noqa: E402
from .synthetic import write_mvtec_folder  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Ignore what libraries warn about choices made here on purpose (flows/output.py says why)."""
    for message, _why in EXPECTED_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:.*{message}")


@pytest.hookimpl(trylast=True)  # after pytest-randomly has shuffled, and the faults are marked slow
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest first, each group in its shuffled order: the team stack's tests, then the slow
    ones (real data, several processes, faults), then the rest. pytest-xdist hands out whole files
    in this order (make test turns off its reordering by test count, which put the stack last), so
    no worker is left alone with a long file at the end."""
    items.sort(key=lambda item: [item.get_closest_marker(marker) is None for marker in ("stack", "slow")])


@pytest.fixture(autouse=True)
def _project_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use their project's SQLite store (or a server they start), never the user's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def tiny_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 normal training images (odd, so DDP must pad), 3 normal and 3 defective test images."""
    return write_mvtec_folder(tmp_path_factory.mktemp("tiny") / "tiny", 7, 3, 3)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_fit(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """A tiny line fitted with the paper's options, shared by the session's tests."""
    return fit_tiny_line(tmp_path_factory.mktemp("tiny_fit"))


@pytest.fixture(scope="session")
def tiny_fit_with_options(tmp_path_factory: pytest.TempPathFactory) -> Fit:
    """The same line fitted with aligned maps, a projection and pooled Gaussians."""
    return fit_tiny_line(tmp_path_factory.mktemp("tiny_fit_options"), with_options(TINY, OPTIONS))
