"""Monitoring (flows.monitor): a window of production judged against the champion's reference."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, binomtest

from flows.config import MonitorParams
from flows.events import LINE_DRIFT
from flows.monitor.checks import ALARM_RATE, DRIFT, OK, TOO_FEW, Window, judge
from flows.monitor.flow import monitor_lines
from flows.monitor.reference import MonitoringReference
from flows.registry.registry import Registry
from padim_plugin.image_statistics import STATISTICS
from padim_plugin.images import decode_image

from ..prefect_events import events_about
from ..projects import init_project, padim, tiny_params
from ..synthetic import Synthetic, save, write_mvtec_folder

SETTINGS = MonitorParams()
TRAINING = {"width": 256.0, "height": 256.0, "brightness": 0.5, "contrast": 0.12, "sharpness": 0.05}


def stream(rng: np.random.Generator, n: int, brightness: float = 0.5, flagged: float = 0.02) -> Window:
    """``n`` images as an unchanged line gives them (or with another mean ``brightness``, or
    another share ``flagged``)."""
    statistics = {name: np.full(n, value) if name in ("width", "height") else
                  rng.normal(value, value / 10, n) for name, value in TRAINING.items()}
    statistics["brightness"] = rng.normal(brightness, 0.05, n)
    labels = (rng.random(n) < flagged).astype(int)
    scores = np.where(labels == 1, rng.uniform(0.5, 1, n), rng.beta(4, 8, n) * 0.5 / 0.9)
    return Window(np.minimum(scores, 1.0), labels, statistics)


def reference(seed: int = 0, normals: int = 200, false_alarms: int = 4,
              training: int = 300) -> MonitoringReference:
    rng = np.random.default_rng(seed)
    scores = list(rng.beta(4, 8, normals - false_alarms) * 0.5 / 0.9) + [0.7] * false_alarms
    unchanged = stream(rng, training)
    return MonitoringReference(scores, {name: list(unchanged.statistics[name]) for name in STATISTICS})


def test_the_monitor_stays_quiet_on_an_unchanged_stream() -> None:
    rng = np.random.default_rng(1)
    outcomes = [judge(stream(rng, 200), reference(), SETTINGS).outcome for _ in range(40)]
    assert outcomes.count(OK) >= 37  # warn_p 0.05 over all checks: at most 2 of 40 expected


def test_the_monitor_flags_images_twenty_percent_brighter_as_drift_naming_brightness() -> None:
    report = judge(stream(np.random.default_rng(2), 50, brightness=0.6), reference(), SETTINGS)
    assert report.outcome == DRIFT
    assert any(reason.startswith("brightness: median 0.6") for reason in report.reasons)


def test_more_alarms_than_validation_allows_is_drift_by_an_exact_binomial_test() -> None:
    window = stream(np.random.default_rng(3), 200, flagged=0.15)
    report = judge(window, reference(normals=200, false_alarms=4), SETTINGS)
    check = next(check for check in report.checks if check.name == ALARM_RATE)
    allowed = beta.ppf(0.95, 4 + 1, 200 - 4)  # Clopper-Pearson upper bound of 4 in 200
    flagged = int(window.labels.sum())
    assert check.p_value == pytest.approx(binomtest(flagged, 200, allowed, alternative="greater").pvalue)
    assert check.statistic == pytest.approx(flagged / 200 - 4 / 200)
    assert report.outcome == DRIFT


def test_a_window_smaller_than_min_images_is_not_judged() -> None:
    report = judge(stream(np.random.default_rng(4), SETTINGS.min_images - 1), reference(), SETTINGS)
    assert report.outcome == TOO_FEW and report.checks == []


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> tuple[Path, Path]:
    """Line alpha with a champion fitted on synthetic images, and a folder of parts it has not
    seen: the images the same line made next."""
    tmp = tmp_path_factory.mktemp("monitor")
    root = tmp / "project"
    init_project(root, tmp / "remote", tiny_params("alpha"))
    first = write_mvtec_folder(tmp / "v1", 24, 4, 4, n_validation=4)
    assert padim(root, "data", "add", "alpha", first) == 0
    assert padim(root, "retrain", "alpha") == 0
    synthetic = Synthetic(64, seed=0)  # the line's texture; the images drawn first are its data
    parts = [synthetic.normal() for _ in range(100)][60:]
    for i, part in enumerate(parts):
        save(part, tmp / "parts" / f"p{i:03d}.png")
    return root, tmp / "parts"


def test_the_monitor_flow_logs_a_run_and_stays_quiet_on_the_lines_own_parts(
        monitored: tuple[Path, Path], tmp_path: Path) -> None:
    root, parts = monitored
    since = datetime.now(UTC).isoformat()  # this test's window: what it scores
    assert padim(root, "predict", "alpha", parts, "--out", tmp_path / "scored") == 0
    assert padim(root, "monitor", "alpha", "--since", since) == 0
    registry = Registry(root)
    experiment = registry.monitoring_experiment("alpha")
    run = registry.client.search_runs([experiment], order_by=["start_time DESC"])[0]
    assert run.data.tags["padim.outcome"] == OK
    assert run.data.metrics["images"] >= 40
    assert math.isfinite(run.data.metrics["brightness_p"])
    artifacts = {item.path for item in registry.client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json", "distributions.png"} <= artifacts


def test_the_monitor_flow_reports_darker_parts_as_drift_with_an_event(
        monitored: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, parts = monitored
    for part in sorted(parts.iterdir()):
        save((decode_image(part) * 0.6).astype(np.uint8), tmp_path / "dark" / part.name)
    before = len(events_about("alpha", LINE_DRIFT))
    since = datetime.now(UTC).isoformat()
    assert padim(root, "predict", "alpha", tmp_path / "dark", "--out", tmp_path / "scored") == 0

    assert padim(root, "monitor", "alpha", "--since", since) == 0

    assert "alpha: drift" in capsys.readouterr().out
    events = events_about("alpha", LINE_DRIFT, at_least=before + 1)
    assert len(events) == before + 1
    assert events[-1]["resource"]["padim.on_drift"] == "notify"  # params.yaml's default: no retrain
    payload = events[-1]["payload"]
    assert payload["outcome"] == DRIFT and payload["line"] == "alpha" and payload["version"] == "1"
    assert payload["figures"]["brightness_p"] < SETTINGS.drift_p


def test_monitor_lines_judges_every_line_with_a_champion(monitored: tuple[Path, Path]) -> None:
    root, _ = monitored
    outcomes = monitor_lines(since=datetime.now(UTC).isoformat(), root=str(root))
    assert outcomes == {"alpha": TOO_FEW}  # nothing scored since this moment: judged, without a verdict
