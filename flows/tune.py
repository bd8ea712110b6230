"""Choose a line's accuracy options on its validation split; the test split is never read.

    tune_product_line(line, rev)   pull -> validate -> score the grid on validation -> log -> write

The grid: layers (the line's, or the backbone's deeper stages) x channel reduction x aligned maps
(one streamed fit each), x pooling of the Gaussians
(each finalizes the same statistics anew), x image-score rule (computed from the same validation
maps). The winner is the earliest grid point whose validation image AUROC is within one standard
error of the best (the line's own embedding options come first), so that a line keeps what it has
unless another option does clearly better on its own data: on a validation split of a
few dozen images, the best of a large grid is mostly the luckiest. The grid is logged to the line's
MLflow experiment as a table, and the winner is written into the line's ``params.yaml`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn.metrics import roc_auc_score

from padim_plugin.anomaly_map import image_score
from padim_plugin.backbones import DEEPER_LAYERS

from .config import LineParams, load_params, set_line_model_options
from .data.store import DataVersion
from .model.evaluate import role_counts
from .model.fit import fit_statistics
from .model.predictions import predict_role
from .registry.registry import Registry
from .tasks import REMOTE_CALL, RUNS, pull_data, validate_data

EMBEDDINGS: tuple[dict[str, Any], ...] = (
    {"channel_reduction": "random_subset", "align_maps": True},  # the aligned preset's
    {"channel_reduction": "random_subset", "align_maps": False},  # the paper's
    {"channel_reduction": "projection", "align_maps": True},
    {"channel_reduction": "projection", "align_maps": False},
)
POOLINGS: tuple[dict[str, Any], ...] = (
    {"pooling": "per_position", "pooling_window": 3},
    {"pooling": "neighbourhood", "pooling_window": 3},
    {"pooling": "neighbourhood", "pooling_window": 5},
    {"pooling": "shared", "pooling_window": 3},
)
SCORE_RULES: tuple[dict[str, Any], ...] = ({"top_k_percent": None}, {"top_k_percent": 1.0})



def layer_choices(params: LineParams) -> list[dict[str, Any]]:
    """The line's layers, then the backbone's deeper stages where it has them (more context per
    cell: textures and parts that move)."""
    deeper = DEEPER_LAYERS.get(params.model.backbone)
    current = {"layers": params.model.layers}
    if deeper is None or params.model.layers == list(deeper):
        return [current]
    return [current, {"layers": list(deeper)}]


def embedding_choices(params: LineParams) -> list[dict[str, Any]]:
    """The embeddings to fit, the line's own first: the one-standard-error rule keeps it on a tie."""
    own = {key: getattr(params.model, key) for key in EMBEDDINGS[0]}
    return [own, *(embedding for embedding in EMBEDDINGS if embedding != own)]


def grid_size(params: LineParams) -> int:
    return len(layer_choices(params)) * len(embedding_choices(params)) * len(POOLINGS) * len(SCORE_RULES)


@dataclass(frozen=True)
class GridPoint:
    options: dict[str, Any]
    image_auroc: float
    image_auroc_se: float  # its standard error on this validation split (Hanley and McNeil 1982)
    pixel_auroc: float | None  # None: no validation defect has a mask

    def row(self) -> dict[str, Any]:
        return self.options | {"validation_image_auroc": self.image_auroc,
                               "validation_image_auroc_se": self.image_auroc_se,
                               "validation_pixel_auroc": self.pixel_auroc}


@dataclass
class TuningResult:
    line: str
    data_version: str
    grid: list[GridPoint] = field(default_factory=list)
    winner: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    written: bool = False


def auroc_standard_error(auroc: float, n_defect: int, n_normal: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC from n_defect and n_normal images."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (auroc * (1 - auroc) + (n_defect - 1) * (q1 - auroc**2)
                + (n_normal - 1) * (q2 - auroc**2)) / (n_defect * n_normal)
    return float(np.sqrt(max(variance, 0.0)))


def best(grid: list[GridPoint]) -> GridPoint:
    """The earliest grid point within one standard error of the highest validation image AUROC
    (the one-standard-error rule): on a small validation split the top of a grid is mostly noise,
    and the earlier options (the line's own first) keep their place unless clearly beaten."""
    top = max(grid, key=lambda point: point.image_auroc)
    return next(point for point in grid if point.image_auroc >= top.image_auroc - top.image_auroc_se)


def with_options(params: LineParams, options: dict[str, Any]) -> LineParams:
    return LineParams.model_validate(params.model_dump() | {"model": params.model.model_dump() | options})


def score_options(params: LineParams, data_path: Path, work_dir: Path) -> list[GridPoint]:
    """Every grid point's validation AUROCs: one fit per embedding, nothing read from test."""
    counts = role_counts(data_path)
    n_normal, n_defect = counts["validation_normal_images"], counts["validation_defect_images"]
    if not (n_normal and n_defect):
        msg = (f"{params.name}: tuning ranks options by validation AUROC, but the validation split"
               f" holds {n_normal} normal and {n_defect} defect images; it needs both (keep"
               " data.split.defect_validation above 0 and add defect images)")
        raise ValueError(msg)
    grid = []
    for embedding in (layers | embedding for layers in layer_choices(params)
                      for embedding in embedding_choices(params)):
        model = fit_statistics(with_options(params, embedding), data_path, work_dir)
        for pooling in POOLINGS:
            model.model.pooling, model.model.pooling_window = pooling["pooling"], pooling["pooling_window"]
            model.model.finalize()
            validation = predict_role(model, params, data_path, "validation", work_dir)
            pixel_auroc = (float(roc_auc_score(validation.pixel_labels, validation.pixel_scores))
                           if len(np.unique(validation.pixel_labels)) == 2 else None)
            maps = [batch.anomaly_map for batch in validation.batches]
            for rule in SCORE_RULES:
                scores = np.concatenate([image_score(m, rule["top_k_percent"]).flatten().numpy()
                                         for m in maps])
                auroc = float(roc_auc_score(validation.labels, scores))
                standard_error = auroc_standard_error(auroc, n_defect, n_normal)
                grid.append(GridPoint(embedding | pooling | rule, auroc, standard_error, pixel_auroc))
    return grid


@task(name="score the options on validation", cache_policy=NO_CACHE)
def score_grid(params: LineParams, data: DataVersion, root: Path) -> list[GridPoint]:
    return score_options(params, data.path, root / RUNS / f"tune-{params.name}-{data.md5[:12]}")


@task(name="log the grid", **REMOTE_CALL)
def log_grid(root: Path, params: LineParams, data: DataVersion, grid: list[GridPoint],
             winner: GridPoint) -> str:
    scores = {"validation_image_auroc": winner.image_auroc,
              "validation_image_auroc_se": winner.image_auroc_se}
    if winner.pixel_auroc is not None:
        scores["validation_pixel_auroc"] = winner.pixel_auroc
    rows = [point.row() for point in grid]
    return Registry(root).log_tuning(params.name, data, rows, winner.options, scores)


@flow(name="tune-product-line", log_prints=True)
def tune_product_line(line: str, rev: str | None = None, root: str = ".", write: bool = True) -> TuningResult:
    """Pull the line's data, score the grid on validation, log it, write the winner to params.yaml."""
    project = Path(root).resolve()
    params = load_params(project / "params.yaml").line(line)
    data = pull_data(project, line, rev)
    validate_data(data, params)
    grid = score_grid(params, data, project)
    winner = best(grid)
    run_id = log_grid(project, params, data, grid, winner)
    if write:
        set_line_model_options(project / "params.yaml", line, winner.options)
    get_run_logger().info("%s: best on validation %s (image AUROC %.4f)", line, winner.options,
                          winner.image_auroc)
    return TuningResult(line, data.md5, grid, winner.options, run_id, write)


def grid_table(result: TuningResult) -> str:
    """The grid as markdown, best first."""
    keys = list(result.grid[0].options)
    lines = ["| " + " | ".join([*keys, "val. image AUROC", "val. pixel AUROC"]) + " |",
             "|" + "---|" * (len(keys) + 2)]
    for point in sorted(result.grid, key=lambda p: -p.image_auroc):
        pixel = "n/a" if point.pixel_auroc is None else f"{point.pixel_auroc:.4f}"
        lines.append("| " + " | ".join([*(str(point.options[k]) for k in keys), f"{point.image_auroc:.4f}",
                                         pixel]) + " |")
    return "\n".join(lines)
