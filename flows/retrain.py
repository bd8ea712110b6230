"""Prefect flows: retrain each product line from its DVC data version to an MLflow champion.

    retrain_product_line(line, rev)   pull -> validate -> fit + evaluate -> register -> gate
    retrain(lines, rev)               every line in parallel; one failure does not stop the rest

A fit is known by its cache key (data md5, line params, code version): a rerun on unchanged inputs
finds the registered version before fitting and leaves the champion alone; a fit whose process
died before registering is found in Prefect's result cache instead of being refitted.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from .config import LineParams, load_params
from .data import DataStore, DataVersion
from .gates import Decision, decide
from .incremental import StatisticsStore, refit_statistics, statistics_config
from .registry import TAG, Candidate, LineLock, Registry
from .validation import validate_line

PACKAGE_DIRS = ("padim_plugin", "flows")
RUNS = Path(".padim") / "runs"


@dataclass
class TrainedModel:
    """Files and scores of one fit; they live under .padim/runs/<cache key>/."""

    cache_key: str
    model_path: str
    metrics: dict[str, float]
    unavailable: dict[str, str]  # metric -> why the test split cannot give it
    calibration: dict[str, float | str]  # thresholds and normalisation, from validation only
    figures: dict[str, str]
    fit: dict[str, str] = field(default_factory=dict)  # flows.incremental.FitReport: path taken, images
    statistics_path: str = ""  # the kept statistics (.padim/statistics/<cache key>)


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


@cache
def code_version() -> str:
    """Hash of the package sources, so a code change invalidates cached fits."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for folder in PACKAGE_DIRS:
        for source in sorted((root / folder).glob("*.py")):
            digest.update(source.name.encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def fit_cache_key(params: LineParams, data: DataVersion) -> str:
    settings = json.dumps(params.model_dump(), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{data.md5}|{settings}|{code_version()}".encode()).hexdigest()
    return f"{params.name}-{digest[:24]}"


def _task_cache_key(params: LineParams, data: DataVersion, root: Path) -> str:
    """The fit's key in Prefect's result cache, which projects on one machine share: the files a
    cached result names are the project's own."""
    project = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return f"{fit_cache_key(params, data)}-{project}"


@task(name="pull data", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=[2, 10])
def pull_data(root: Path, line: str, rev: str | None) -> DataVersion:
    version = DataStore(root).pull(line, rev)
    get_run_logger().info("%s: data version %s at %s", line, version.md5, version.rev[:12])
    return version


@task(name="validate data", cache_policy=NO_CACHE)
def validate_data(data: DataVersion, params: LineParams) -> None:
    validate_line(data.path, params.data.min_train_images, params.data.min_validation_images)


@task(
    name="fit and evaluate",
    cache_key_fn=lambda context, arguments: _task_cache_key(arguments["params"], arguments["data"],
                                                            arguments["root"]),
    persist_result=True,
)
def fit_and_evaluate(params: LineParams, data: DataVersion, root: Path) -> TrainedModel:
    from .evaluate import evaluate, write_metrics
    from .train import fit_line, save_model

    key = fit_cache_key(params, data)
    work = root / RUNS / key
    logger = get_run_logger()
    logger.info("%s: fitting %s on %s", params.name, params.model.backbone, data.path)
    config, store = statistics_config(params, code_version()), StatisticsStore(root)
    if params.fit.incremental:  # statistics kept by fits on other machines, if this one lacks them
        Registry(root).fetch_statistics(params.name, config, store)
    statistics, report = refit_statistics(params, data, root, work, key, config)
    logger.info("%s: %s", params.name, report.describe())
    model, calibration = fit_line(params, data.path, work, statistics)
    model_path = save_model(model, params, work / "model", data.md5)
    evaluation = evaluate(model, params, data.path, work)
    write_metrics(evaluation, work / "metrics.json")
    logger.info("%s: threshold %s; %s", params.name, calibration.image_rule,
                _format_metrics(evaluation.metrics))
    return TrainedModel(key, str(model_path), evaluation.metrics, evaluation.unavailable,
                        calibration.as_params(),
                        {name: str(path) for name, path in evaluation.figures.items()},
                        report.as_tags() | {"statistics_config": config},
                        str(store.folder(key)))


@task(name="register candidate", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=[2, 10])
def register_candidate(root: Path, params: LineParams, data: DataVersion, trained: TrainedModel) -> Candidate:
    return Registry(root).log_candidate(
        params, data, trained.metrics, trained.unavailable, trained.calibration, Path(trained.model_path),
        {name: Path(path) for name, path in trained.figures.items()}, trained.cache_key,
        code_version(), trained.fit, Path(trained.statistics_path) if trained.statistics_path else None,
    )


@dataclass(frozen=True)
class ChampionScores:
    """The champion's metrics on the candidate's data, or why it cannot be scored there."""

    version: str
    metrics: dict[str, float] | None
    problem: str = ""


@task(name="score champion on the same data", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=[2, 10])
def champion_scores(root: Path, params: LineParams, data: DataVersion,
                    candidate_version: str) -> ChampionScores | None:
    """The champion's metrics on this data version: logged ones if it was evaluated on exactly
    this data by this code, else a fresh evaluation of the champion model. A champion whose
    pyfunc is a pickle is not loaded (that would run its code)."""
    from .evaluate import evaluate
    from .registry import PickledModelError

    registry = Registry(root)
    champion = registry.champion(params.name)
    if champion is not None and str(champion.version) == candidate_version:  # its promotion was cut short
        previous = champion.tags.get(f"{TAG}previous_champion")
        champion = registry.version(params.name, previous) if previous else None
    if champion is None:
        return None
    version, tags = str(champion.version), champion.tags
    if tags.get("padim.data_md5") == data.md5 and tags.get("padim.code_version") == code_version():
        return ChampionScores(version, registry.run_metrics(champion.run_id))
    try:
        model = registry.load_model(params.name, version)
    except PickledModelError as error:
        return ChampionScores(version, None, f"{error}, so it cannot be re-scored on this data")
    work = root / RUNS / f"champion-{params.name}-v{version}-{data.md5[:12]}"
    return ChampionScores(version, evaluate(model, params, data.path, work).metrics)


@task(name="apply promotion gates", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=[2, 10])
def apply_decision(root: Path, line: str, version: str, decision: Decision) -> None:
    Registry(root).record_decision(line, version, decision.promote, decision.reason)


@task(name="collect kept statistics", cache_policy=NO_CACHE)
def collect_statistics(root: Path, line: str) -> None:
    """Keep statistics only behind the line's champion and latest version (bounded size)."""
    store = StatisticsStore(root)
    freed = Registry(root).collect_statistics(line, store)
    kept = sum(fit.n_bytes for fit in store.kept(line))
    get_run_logger().info("%s: kept statistics %.1f MB (%.1f MB freed)", line, kept / 2**20, freed / 2**20)


@task(name="find a registered fit", cache_policy=NO_CACHE)
def registered_fit(root: Path, params: LineParams, data: DataVersion) -> Candidate | None:
    """The version already registered for this data, params and code, if any."""
    return Registry(root).find_candidate(params.name, fit_cache_key(params, data))


@flow(name="retrain-product-line", log_prints=True)
def retrain_product_line(line: str, rev: str | None = None, root: str = ".") -> LineResult:
    """Pull the line's data at ``rev`` (default HEAD), fit, evaluate, register and gate it.

    Fitting, registering and gating happen in the line's turn (its registry lock), so retrains of
    one line that overlap (a schedule and a manual run, two machines) give one version and one
    decision: the later one finds the earlier one's version and reuses its decision."""
    project = Path(root).resolve()
    params = load_params(project / "params.yaml").line(line)
    registry = Registry(project)
    data = pull_data(project, line, rev)
    validate_data(data, params)
    with registry.line_lock(line, f"retrain {line} on data {data.md5}") as lock:
        known = registered_fit(project, params, data)
        if known is not None and known.decided:
            metrics = registry.run_metrics(known.run_id)
            result = LineResult(line, data.md5, metrics, known.version, known.decision or "",
                                "unchanged data, params and code: reused", run_id=known.run_id)
        else:
            result = fit_register_and_decide(project, params, data, lock)
    publish_report(result, registry.run_link(result.run_id), registry.uri)
    return result


def fit_register_and_decide(project: Path, params: LineParams, data: DataVersion,
                            lock: LineLock) -> LineResult:
    """The part of a retrain that writes a version and a decision (in the line's turn)."""
    trained = fit_and_evaluate(params, data, project)
    if not ((Path(trained.model_path) / "manifest.json").is_file()
            and Path(trained.statistics_path).is_dir()):  # the cached fit's files were cleaned away
        trained = fit_and_evaluate.with_options(refresh_cache=True)(params, data, project)
    candidate = register_candidate(project, params, data, trained)  # found again after a crash
    champion = champion_scores(project, params, data, candidate.version)
    if champion is not None and champion.problem:
        decision = Decision(False, f"{champion.problem}; compare and promote by hand")
    else:
        decision = decide(trained.metrics, champion.metrics if champion else None, params.gates,
                          champion.version if champion else None, trained.unavailable)
    lock.check()
    apply_decision(project, params.name, candidate.version, decision)
    collect_statistics(project, params.name)
    return LineResult(params.name, data.md5, trained.metrics, candidate.version,
                      "champion" if decision.promote else "challenger", decision.reason,
                      run_id=candidate.run_id)


def publish_report(result: LineResult, run_link: str, uri: str) -> None:
    metrics = "\n".join(f"| {name} | {value:.4g} |" for name, value in sorted(result.metrics.items()))
    create_markdown_artifact(
        key=f"retrain-{result.line.lower().replace('_', '-')}",
        description=f"retrain {result.line}",
        markdown=(
            f"# {result.line}: v{result.model_version} is {result.decision}\n\n"
            f"{result.reason}\n\n| metric | value |\n|---|---|\n{metrics}\n\n"
            f"- data version: `{result.data_version}`\n- MLflow: {run_link}\n"
            f"- registry: `models:/padim-{result.line}@champion` on `{uri}`\n"
        ),
    )


@task(name="retrain line", cache_policy=NO_CACHE)
def retrain_line(line: str, rev: str | None, root: str) -> LineResult:
    """Run one line's flow; its failure becomes a row of the summary, not the end of the run."""
    try:
        return retrain_product_line(line, rev, root)
    except Exception as error:  # noqa: BLE001  # reported per line, see the summary
        get_run_logger().error("%s failed: %s", line, error)
        return LineResult(line, error=f"{type(error).__name__}: {error}")


@flow(name="retrain", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def retrain(lines: list[str] | None = None, rev: str | None = None, root: str = ".") -> list[LineResult]:
    """Retrain every product line in params.yaml (or ``lines``) in parallel; print the summary."""
    lines = lines or sorted(load_params(Path(root) / "params.yaml").lines)
    futures = [retrain_line.submit(line, rev, root) for line in lines]
    results = [future.result() for future in futures]
    print(summary_table(results))
    return results


def run_retrain(lines: list[str] | None = None, rev: str | None = None, root: str = ".",
                dask_address: str | None = None, max_parallel: int = 2) -> list[LineResult]:
    """``retrain`` with the fan-out chosen here: threads locally, or a Dask cluster."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner: Any = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=max_parallel)
    return retrain.with_options(task_runner=runner)(lines, rev, root)


def summary_table(results: list[LineResult]) -> str:
    header = ("| line | data version | image AUROC | pixel AUROC | pixel AUPRO | test F1 | test normal FPR"
              " | version | decision |")
    rows = [header, "|" + "---|" * 9]
    for r in results:
        if r.error:
            rows.append(f"| {r.line} | | | | | | | | FAILED: {' '.join(r.error.split())} |")
            continue
        names = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1", "test_normal_fpr")
        values = [_number(r.metrics.get(name)) for name in names]
        rows.append(f"| {r.line} | {r.data_version[:12]} | {' | '.join(values)} | v{r.model_version}"
                    f" | {r.decision}: {r.reason} |")
    return "\n".join(rows)


def _number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.3f}" for name, value in sorted(metrics.items()))
