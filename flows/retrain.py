"""Prefect flows: retrain each product line from its DVC data version to an MLflow decision.

    retrain_product_line(line, rev)   pull -> validate -> trace lineage -> fit + evaluate -> register
                                      -> re-score the champion -> gate -> record the decision
    retrain(lines, rev)               every line in parallel; one failure does not stop the rest

A retrain runs the params and code of the working tree, so it refuses uncommitted changes to them
unless told ``allow_dirty`` (the version is then marked dirty and never promoted automatically). A
fit is known by its key (data md5, line params, code version, and whether the tree was dirty): a
rerun on unchanged inputs finds the registered version before fitting and leaves the champion
alone, except that a version held back only because its data was not on the DVC remote is gated
again once it is; a fit whose process died before registering is found in Prefect's result cache
instead of being refitted. A line with ``promotion: approval`` leaves a passing candidate pending;
given ``approval_timeout_s``, the flow then waits that long for an answer (flows.approval).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from .approval import wait_for_approval
from .config import LineParams, load_params
from .data.store import DataStore, DataVersion
from .events import RETRAIN_FAILED, emit
from .model.build import save_model
from .model.evaluate import evaluate, evaluation_images, write_metrics
from .model.features import KeptFeatures, image_digest
from .model.fit import fit_line
from .model.incremental import StatisticsStore, refit_statistics, statistics_config
from .model.trained import TrainedModel
from .monitor.reference import build_reference
from .registry.gates import DATA_ON_REMOTE, SUPPORTED_OPERATING_POINT, Check, Decision, decide
from .registry.lineage import Lineage, lineage_of, require_clean
from .registry.lock import LineLock
from .registry.registry import (
    CHAMPION,
    PENDING,
    TAG,
    Candidate,
    PickledModelError,
    Registry,
    rate_with_interval,
)
from .registry.statistics import collect_statistics, fetch_statistics
from .tasks import REMOTE_CALL, RUNS, pull_data, validate_data

PACKAGE_DIRS = ("padim_plugin", "flows")
WAITING_EVERY_S = 30.0  # how often a retrain names the lines it still waits for
# the operating point at a glance: the summary's and the report's columns
SUMMARY_METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"),
                   ("pixel AUPRO", "pixel_aupro"), ("false alarms (test)", "test_normal_fpr"),
                   ("recall (test)", "image_recall"), ("F1 (test)", "image_f1"))


@dataclass
class LineResult:
    """One row of the retrain summary."""

    line: str
    data_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    decision: str = ""
    reason: str = ""
    error: str = ""
    run_id: str = ""  # the MLflow run of the version
    champion_version: str = ""  # the champion it was compared with ("" none)
    champion_metrics: dict[str, float] = field(default_factory=dict)  # re-scored on the same data
    champion_run_id: str = ""  # the run holding those metrics
    figures: dict[str, str] = field(default_factory=dict)  # name -> where to see it


@cache
def code_version() -> str:
    """Hash of the package sources, so a code change invalidates cached fits."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for folder in PACKAGE_DIRS:
        for source in sorted((root / folder).rglob("*.py")):
            digest.update(source.relative_to(root).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def fit_cache_key(params: LineParams, data_md5: str) -> str:
    # how production scoring is logged does not change the model
    settings = json.dumps(params.model_dump(exclude={"production"}), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{data_md5}|{settings}|{code_version()}".encode()).hexdigest()
    return f"{params.name}-{digest[:24]}"


def version_key(params: LineParams, data_md5: str, dirty: bool) -> str:
    """The registered version's key: a fit from a dirty tree is a version of its own, so that the
    same fit from the committed tree is registered (and gated) anew."""
    return fit_cache_key(params, data_md5) + ("-dirty" if dirty else "")


def _task_cache_key(params: LineParams, data: DataVersion, root: Path) -> str:
    """The fit's key in Prefect's result cache, which projects on one machine share: the files a
    cached result names are the project's own."""
    project = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return f"{fit_cache_key(params, data.md5)}-{project}"


@task(name="trace lineage", **REMOTE_CALL)
def trace_lineage(root: Path, data: DataVersion, dirty: list[str]) -> Lineage:
    """The commit, and whether the DVC remote holds the whole data version."""
    lineage = lineage_of(root, data, dirty)
    if lineage.missing_on_remote:
        get_run_logger().warning("%s: %d file(s) of data version %s are not on the DVC remote %s", data.line,
                                 len(lineage.missing_on_remote), data.md5, lineage.remote_url)
    return lineage


@task(
    name="fit and evaluate",
    cache_key_fn=lambda context, arguments: _task_cache_key(arguments["params"], arguments["data"],
                                                            arguments["root"]),
    persist_result=True,
)
def fit_and_evaluate(params: LineParams, data: DataVersion, root: Path) -> TrainedModel:
    key = fit_cache_key(params, data.md5)
    work = root / RUNS / key
    logger = get_run_logger()
    logger.info("%s: fitting %s on %s", params.name, params.model.backbone, data.path)
    config, store = statistics_config(params, code_version()), StatisticsStore(root)
    if params.fit.incremental:  # statistics kept by fits on other machines, if this one lacks them
        fetch_statistics(Registry(root), params.name, config, store)
    statistics, report = refit_statistics(params, data, root, work, key, config)
    logger.info("%s: %s", params.name, report.describe())
    kept = kept_features(root, params)
    model, calibration = fit_line(params, data.path, work, statistics, kept)
    model_path = save_model(model, params, work / "model", data.md5)
    evaluation = evaluate(model, params, data.path, work, kept)
    metrics = evaluation.metrics | {name: value for name, value in (
        ("validation_normal_fpr", calibration.validation_normal_fpr),
        ("validation_recall", calibration.validation_recall)) if math.isfinite(value)}
    write_metrics(evaluation, work / "metrics.json")
    logger.info("%s: threshold %s; %s", params.name, calibration.image_rule, _format_metrics(metrics))
    return TrainedModel(key, str(model_path), metrics, evaluation.unavailable, calibration.as_params(),
                        {name: str(path) for name, path in evaluation.figures.items()},
                        report.as_tags() | {"statistics_config": config,
                                            "features_config": kept.config(model) if kept else ""},
                        str(store.folder(key)), calibration.unsupported,
                        build_reference(model, data.path).to_dict())


@task(name="register candidate", **REMOTE_CALL)
def register_candidate(root: Path, params: LineParams, data: DataVersion, trained: TrainedModel,
                       lineage: Lineage) -> Candidate:
    return Registry(root).log_candidate(params, data, trained, lineage, code_version(),
                                        version_key(params, data.md5, bool(lineage.dirty)))


@dataclass(frozen=True)
class ChampionScores:
    """The champion's metrics on the candidate's data (and the run holding them), or why it cannot
    be scored there."""

    version: str
    metrics: dict[str, float] | None
    run_id: str = ""
    problem: str = ""
    features_config: str = ""  # the kept features it was scored from ("" none)


@task(name="score champion on the same data", **REMOTE_CALL)
def champion_scores(root: Path, params: LineParams, data: DataVersion,
                    candidate_version: str) -> ChampionScores | None:
    """The champion's metrics on this data version: logged ones if it was evaluated on exactly
    this data by this code, else a fresh evaluation of the champion model, logged as its own run.
    A champion whose pyfunc is a pickle is not loaded (that would run its code)."""
    registry = Registry(root)
    champion = registry.champion(params.name)
    if champion is not None and str(champion.version) == candidate_version:  # its promotion was cut short
        previous = champion.tags.get(f"{TAG}previous_champion")
        champion = registry.version(params.name, previous) if previous else None
    if champion is None:
        return None
    version, tags = str(champion.version), champion.tags
    if tags.get(f"{TAG}data_md5") == data.md5 and tags.get(f"{TAG}code_version") == code_version():
        return ChampionScores(version, registry.run_metrics(champion.run_id), champion.run_id)
    try:
        model = registry.load_model(params.name, version)
    except PickledModelError as error:
        return ChampionScores(version, None, problem=f"{error}, so it cannot be re-scored on this data")
    work = root / RUNS / f"champion-{params.name}-v{version}-{data.md5[:12]}"
    kept = kept_features(root, params)
    metrics = evaluate(model, params, data.path, work, kept).metrics
    return ChampionScores(version, metrics, registry.log_rescored(params.name, champion, data, metrics,
                                                                  code_version()),
                          features_config=kept.config(model) if kept else "")


@task(name="record the decision", **REMOTE_CALL)
def record_decision(root: Path, params: LineParams, candidate: Candidate, decision: Decision, lock: LineLock,
                    links: dict[str, str]) -> str:
    """Record the gate's verdict (champion, pending approval or challenger); returns the outcome."""
    event = Registry(root).record_decision(params.name, candidate.version, decision, params.promotion, lock,
                                           links)
    return event.outcome


@task(name="collect kept statistics", cache_policy=NO_CACHE)
def collect_kept_statistics(root: Path, line: str) -> None:
    """Keep statistics only behind the line's champion and latest version (bounded size)."""
    store = StatisticsStore(root)
    freed = collect_statistics(Registry(root), line, store)
    kept = sum(fit.n_bytes for fit in store.kept(line))
    get_run_logger().info("%s: kept statistics %.1f MB (%.1f MB freed)", line, kept / 2**20, freed / 2**20)


def kept_features(root: Path, params: LineParams) -> KeptFeatures | None:
    """The line's kept validation and test features, unless ``fit.keep_features`` is off."""
    return KeptFeatures(root, params.name, code_version()) if params.fit.keep_features else None


@task(name="collect kept features", cache_policy=NO_CACHE)
def collect_kept_features(root: Path, params: LineParams, data: DataVersion, configs: set[str]) -> None:
    """Keep features only of this data version's validation and test images, under the configs
    this retrain scored with (bounded size: one version's evaluation images per config)."""
    kept = KeptFeatures(root, params.name, code_version())
    digests = {image_digest(path) for path in evaluation_images(data.path)}
    freed = kept.collect_garbage(configs - {""}, digests)
    get_run_logger().info("%s: kept features %.1f MB (%.1f MB freed)", params.name, kept.n_bytes() / 2**20,
                          freed / 2**20)


@flow(name="retrain-product-line", log_prints=True)
def retrain_product_line(line: str, rev: str | None = None, root: str = ".", allow_dirty: bool = False,
                         approval_timeout_s: int = 0) -> LineResult:
    """Pull the line's data at ``rev`` (default HEAD), fit, evaluate, register and gate it.

    Fitting, registering and gating happen in the line's turn (its registry lock), so retrains of
    one line that overlap (a schedule and a manual run, two machines) give one version and one
    decision: the later one finds the earlier one's version and reuses its decision. A passing
    candidate of a line under approval waits as pending; with ``approval_timeout_s`` the flow
    waits that long for the answer, outside the line's turn. A retrain that fails is announced
    (``padim.retrain.failed``, flows.events) before its error is raised."""
    project = Path(root).resolve()
    try:
        result = retrain_or_reuse(line, rev, project, allow_dirty)
    except Exception as error:
        emit(RETRAIN_FAILED, line, {"version": "", "reason": f"{type(error).__name__}: {error}",
                                    "link": flow_run.ui_url or ""})
        raise
    if result.decision == PENDING and approval_timeout_s > 0:
        result.decision, result.reason = wait_for_approval(project, line, result.model_version,
                                                           approval_timeout_s)
    return result


def retrain_or_reuse(line: str, rev: str | None, project: Path, allow_dirty: bool) -> LineResult:
    """The line's version for this data, params and code: found registered, or fitted, registered
    and gated now; its report published."""
    dirty = require_clean(project, allow_dirty)
    params = load_params(project / "params.yaml").line(line)
    registry = Registry(project)
    result = unchanged_before_pull(project, registry, params, rev, bool(dirty))
    if result is None:
        data = pull_data(project, line, rev)
        validate_data(data, params)
        lineage = trace_lineage(project, data, dirty)
        with registry.turn(line, f"retrain {line} on data {data.md5}") as lock:
            known = registry.find_candidate(line, version_key(params, data.md5, bool(lineage.dirty)))
            held_by_remote = known is not None and DATA_ON_REMOTE in known.gate_failed
            if known is not None and known.decided and not (held_by_remote and not lineage.missing_on_remote):
                result = reused(registry, line, known, data.md5, "unchanged data, params and code: reused")
            else:
                result = fit_register_and_decide(project, params, data, lineage, lock)
    publish_report(result, registry)
    return result


@task(name="skip if unchanged", **REMOTE_CALL)
def unchanged_before_pull(project: Path, registry: Registry, params: LineParams, rev: str | None,
                          dirty: bool) -> LineResult | None:
    """The decided version fitted on this data version (read from its DVC pointer in git, nothing
    pulled), params and code, if there is one: a nightly run then skips the line at the cost of a
    git read and a registry query. A version held back because its data was not on the remote is
    not skipped: the full path checks the remote again."""
    store = DataStore(project)
    data_md5 = store.md5(params.name, store.commit_of(rev or "HEAD"))  # the version pull would give
    known = registry.find_candidate(params.name, version_key(params, data_md5, dirty))
    if known is None or not known.decided or DATA_ON_REMOTE in known.gate_failed:
        return None
    return reused(registry, params.name, known, data_md5, "unchanged data, params and code: reused"
                  " (nothing pulled)")


def reused(registry: Registry, line: str, known: Candidate, data_md5: str, reason: str) -> LineResult:
    """The result of a retrain that found its version registered and decided already."""
    return LineResult(line, data_md5, registry.run_metrics(known.run_id), known.version, known.decision or "",
                      reason, run_id=known.run_id)


def fit_register_and_decide(project: Path, params: LineParams, data: DataVersion, lineage: Lineage,
                            lock: LineLock) -> LineResult:
    """The part of a retrain that writes a version and a decision (in the line's turn)."""
    trained = fit_and_evaluate(params, data, project)
    if not ((Path(trained.model_path) / "manifest.json").is_file()
            and Path(trained.statistics_path).is_dir()):  # the cached fit's files were cleaned away
        trained = fit_and_evaluate.with_options(refresh_cache=True)(params, data, project)
    candidate = register_candidate(project, params, data, trained, lineage)  # found again after a crash
    champion = champion_scores(project, params, data, candidate.version)
    blockers = lineage.blockers(data)
    if trained.unsupported:
        blockers.append(Check(SUPPORTED_OPERATING_POINT, False, trained.unsupported))
    if champion is not None and champion.problem:
        blockers.append(Check("champion comparable", False,
                              f"{champion.problem}; compare and promote by hand"))
    decision = decide(trained.metrics, champion.metrics if champion else None, params.gates,
                      champion.version if champion else None, trained.unavailable,
                      params.thresholds.false_alarm_budget, blockers)
    lock.check()
    links = {"candidate_run": candidate.run_id} | ({"champion_run": champion.run_id} if champion else {})
    outcome = record_decision(project, params, candidate, decision, lock, links)
    collect_kept_statistics(project, params.name)
    collect_kept_features(project, params, data, {trained.fit.get("features_config", ""),
                                                  champion.features_config if champion else ""})
    reason = decision.reason
    if outcome == PENDING:
        reason += (f"; waits for approval: padim-mlops approve {params.name} {candidate.version} --reason ..."
                   " (or reject)")
    return LineResult(params.name, data.md5, trained.metrics, candidate.version, outcome, reason,
                      run_id=candidate.run_id, champion_version=champion.version if champion else "",
                      champion_metrics=(champion.metrics or {}) if champion else {},
                      champion_run_id=champion.run_id if champion else "",
                      figures={name: Path(path).name for name, path in trained.figures.items()})


def publish_report(result: LineResult, registry: Registry) -> None:
    """The line's Prefect report: the decision, the candidate beside the champion, where to look."""
    rows = [f"| {title} | {_number(result.metrics.get(name))} | {_number(result.champion_metrics.get(name))}"
            " |" for title, name in SUMMARY_METRICS]
    header = f"| metric (same data) | v{result.model_version} | champion v{result.champion_version or '-'} |"
    links = [f"- candidate run: {registry.run_link(result.run_id)}"]
    if result.champion_run_id:
        links.append(f"- champion re-scored: {registry.run_link(result.champion_run_id)}")
    links += [f"- {name}: {registry.artifact_link(result.run_id, f'figures/{file}')}"
              for name, file in sorted(result.figures.items())]
    create_markdown_artifact(
        key=f"retrain-{result.line.lower().replace('_', '-')}",
        description=f"retrain {result.line}",
        markdown=(
            f"# {result.line}: v{result.model_version} is {result.decision}\n\n{result.reason}\n\n"
            f"{header}\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"- data version: `{result.data_version}`\n" + "\n".join(links) + "\n"
            f"- registry: `models:/padim-{result.line}@{CHAMPION}` on `{registry.uri}`\n"
        ),
    )


@task(name="retrain line", cache_policy=NO_CACHE)
def retrain_line(line: str, rev: str | None, root: str, allow_dirty: bool = False) -> LineResult:
    """Run one line's flow; its failure becomes a row of the summary, not the end of the run."""
    try:
        return retrain_product_line(line, rev, root, allow_dirty)
    except Exception as error:  # reported per line, see the summary
        get_run_logger().error("%s failed: %s", line, error)
        return LineResult(line, error=f"{type(error).__name__}: {error}")


@flow(name="retrain", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def retrain(lines: list[str] | None = None, rev: str | None = None, root: str = ".",
            allow_dirty: bool = False) -> list[LineResult]:
    """Retrain every product line in params.yaml (or ``lines``) in parallel; print the summary.
    Each line's flow refuses a dirty tree unless ``allow_dirty``."""
    lines = lines or sorted(load_params(Path(root) / "params.yaml").lines)
    futures = [retrain_line.submit(line, rev, root, allow_dirty) for line in lines]
    wait_reporting(futures, lines)
    results = [future.result() for future in futures]
    print(summary_table(results))
    return results


def wait_reporting(futures: list[PrefectFuture], lines: list[str], every_s: float = WAITING_EVERY_S) -> None:
    """Wait for every line's future, saying every ``every_s`` seconds which lines are still running
    (on a Dask cluster their own lines are logged on its workers, not here)."""
    started, pending = time.monotonic(), dict(zip(futures, lines, strict=True))
    while pending:
        done, _ = wait(list(pending), timeout=every_s)
        for future in done:
            del pending[future]
        if pending:
            get_run_logger().info("%d/%d line(s) done, %.0f s; waiting on %s", len(lines) - len(pending),
                                  len(lines), time.monotonic() - started, ", ".join(sorted(pending.values())))


def run_retrain(lines: list[str] | None = None, rev: str | None = None, root: str = ".",
                dask_address: str | None = None, max_parallel: int = 2,
                allow_dirty: bool = False) -> list[LineResult]:
    """``retrain`` with the fan-out chosen here: threads locally, or a Dask cluster."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner: Any = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=max_parallel)
    return retrain.with_options(task_runner=runner)(lines, rev, root, allow_dirty)


def summary_table(results: list[LineResult]) -> str:
    """One row per line: the metrics at its operating point, with 95% intervals, and the decision."""
    titles = ["image AUROC", "pixel AUROC", "false alarms (test, 95% CI)", "recall (test, 95% CI)", "F1"]
    rows = [f"| line | data version | {' | '.join(titles)} | version | decision |", "|" + "---|" * 9]
    for r in results:
        if r.error:
            rows.append(f"| {r.line} | | | | | | | | FAILED: {' '.join(r.error.split())} |")
            continue
        m = r.metrics
        values = [_number(m.get("image_auroc")), _number(m.get("pixel_auroc")),
                  rate_with_interval(m, "test_normal_fpr"), rate_with_interval(m, "image_recall"),
                  _number(m.get("image_f1"))]
        rows.append(f"| {r.line} | {r.data_version[:12]} | {' | '.join(values)} | v{r.model_version}"
                    f" | {r.decision}: {r.reason} |")
    return "\n".join(rows)


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in sorted(metrics.items()))
