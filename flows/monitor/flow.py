"""The ``monitor-product-line`` flow: judge a window of a line's production log against its champion.

It reads the rows the champion scored since ``since`` from the line's production log, judges them
against the reference the champion's run kept at fit time (flows.monitor.checks), and reports:

- an MLflow run per window in ``padim/<line>/monitoring``: the outcome as a tag, each check's
  statistic and p-value as metrics, the report and a figure (score and input-statistic
  distributions, window against reference) as artifacts;
- a Prefect markdown artifact ``monitor-<line>``;
- on drift, the Prefect event ``padim.line.drift`` (flows.events) carrying the outcome, the
  champion version, the reasons, every figure and a link to the run, for automations to act on.
  A warn is recorded in the run and the artifact only: on unchanged real windows it comes several
  times as often as a drift (bench/monitoring.py), too often to page anyone.

``padim-mlops monitor LINE`` runs it; ``prefect.yaml`` deploys it on a schedule.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from mlflow.entities.model_registry import ModelVersion
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from padim_plugin.image_statistics import STATISTICS

from ..batch import production_log
from ..config import load_params
from ..events import LINE_DRIFT, emit
from ..model.trained import REFERENCE_ARTIFACT
from ..registry.registry import TAG, Registry
from ..review import parse_since
from .checks import DRIFT, MonitorReport, Window, judge
from .reference import MonitoringReference


def champion_reference(registry: Registry, line: str) -> tuple[ModelVersion, MonitoringReference]:
    """The line's champion and the reference its run kept; a clear error if it has neither."""
    champion = registry.champion(line)
    if champion is None:
        raise ValueError(f"{line} has no champion: nothing in production to monitor")
    try:
        document = mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/{REFERENCE_ARTIFACT}")
    except Exception as error:  # MLflow raises its own kinds for a missing artifact
        msg = (f"{line}: champion v{champion.version} kept no monitoring reference ({REFERENCE_ARTIFACT}):"
               " it was fitted before monitoring existed; retrain the line to monitor it")
        raise ValueError(msg) from error
    return champion, MonitoringReference.from_dict(document)


def window_of(table: pa.Table, version: str) -> Window:
    """The rows of ``table`` that model ``version`` scored."""
    rows = table.filter(pc.equal(table.column("model_version"), version))

    def values(name: str) -> np.ndarray:
        return rows.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    return Window(values("score"), values("label").astype(int), {name: values(name) for name in STATISTICS})


@flow(name="monitor-product-line")
def monitor_product_line(line: str, since: str = "24h", root: str = ".") -> MonitorReport:
    """Judge what the champion of ``line`` scored since ``since`` (24h, 7d or an ISO time)."""
    project = Path(root).resolve()
    params = load_params(project / "params.yaml").line(line)
    start = parse_since(since)
    registry = Registry(project)
    champion, reference = champion_reference(registry, line)
    log = production_log(project, params.production)
    if log is None:
        raise ValueError(f"{line}: params.yaml's production.log is null: nothing is logged to monitor")
    window = window_of(log.read(line, start), str(champion.version))
    report = judge(window, reference, params.production.monitor)
    text = markdown(line, str(champion.version), start, report)
    run_id = log_window(registry, line, str(champion.version), start, report, window, reference, text)
    create_markdown_artifact(key=f"monitor-{line.lower().replace('_', '-')}", markdown=text,
                             description=f"{line}: {report.outcome}")
    if report.outcome == DRIFT:
        emit(LINE_DRIFT, line, {
            "outcome": report.outcome, "version": str(champion.version), "reason": "; ".join(report.reasons),
            "since": start.isoformat(timespec="seconds"), "figures": report.figures(),
            "link": registry.run_link(run_id), "root": str(project),
        }, labels={"padim.on_drift": params.production.monitor.on_drift})
    get_run_logger().info("champion v%s since %s: %s", champion.version, start.isoformat(timespec="seconds"),
                          report.describe(line))
    return report


@flow(name="monitor-lines")
def monitor_lines(since: str = "24h", root: str = ".") -> dict[str, str]:
    """Monitor every line of params.yaml that has a champion: {line: outcome, or why it was not
    monitored}. One line's failure does not stop the others; the run fails if any line failed."""
    project = Path(root).resolve()
    registry = Registry(project)
    outcomes, failed = {}, []
    for line in load_params(project / "params.yaml").lines:
        if registry.champion(line) is None:
            outcomes[line] = "no champion"
            continue
        try:
            outcomes[line] = monitor_product_line(line, since, root).outcome
        except Exception as error:  # reported with the others: every line gets its turn
            outcomes[line] = f"failed: {error}"
            failed.append(line)
    if failed:
        raise RuntimeError(f"monitoring failed for {', '.join(failed)}: {outcomes}")
    return outcomes


def markdown(line: str, version: str, start: datetime, report: MonitorReport) -> str:
    rows = "".join(f"| {check.name} | {check.statistic:.3g} | {check.p_value:.2g} | {check.detail} |\n"
                   for check in report.checks)
    reasons = "".join(f"- {reason}\n" for reason in report.reasons) or "- every check within bounds\n"
    return (f"# {line}: {report.outcome}\n\n{report.images} images scored by champion v{version} since"
            f" {start.isoformat(timespec='seconds')}\n\n{reasons}\n"
            f"| check | statistic | p | figures |\n|---|---|---|---|\n{rows}")


def log_window(registry: Registry, line: str, version: str, start: datetime, report: MonitorReport,
               window: Window, reference: MonitoringReference, text: str) -> str:
    """The window's MLflow run in ``padim/<line>/monitoring``; returns its id."""
    now = datetime.now(UTC)
    with mlflow.start_run(experiment_id=registry.monitoring_experiment(line),
                          run_name=f"{line}-v{version}-{now:%Y%m%dT%H%M}") as run:
        mlflow.set_tags({f"{TAG}outcome": report.outcome, f"{TAG}champion_version": version,
                         f"{TAG}window_start": start.isoformat(), f"{TAG}window_end": now.isoformat()})
        mlflow.log_metrics({name: value for name, value in report.figures().items() if np.isfinite(value)})
        mlflow.log_text(text, "report.md")
        mlflow.log_dict(asdict(report), "report.json")
        with tempfile.TemporaryDirectory() as scratch:
            figure = Path(scratch) / "distributions.png"
            draw_distributions(window, reference, figure)
            mlflow.log_artifact(str(figure))
    return run.info.run_id


def draw_distributions(window: Window, reference: MonitoringReference, path: Path) -> None:
    """Scores and each input statistic: the window's distribution over the reference's."""
    panels = [("score", window.scores, np.asarray(reference.normal_scores), "validation normals")]
    panels += [(name, window.statistics[name], np.asarray(reference.training_statistics[name]), "training")
               for name in STATISTICS]
    figure = Figure(figsize=(3.2 * len(panels), 2.8))
    axes = figure.subplots(1, len(panels))
    for axis, (name, values, expected, label) in zip(axes, panels, strict=True):
        values = values[~np.isnan(values)]
        bins = np.histogram_bin_edges(np.concatenate([values, expected]) if len(values) else expected, 20)
        axis.hist(expected, bins, density=True, alpha=0.5, label=label)
        if len(values):
            axis.hist(values, bins, density=True, alpha=0.5, label="window")
        axis.set_title(name)
        axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
