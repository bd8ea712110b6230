"""Batch scoring with a registered line model: the command line's ``predict`` and a Prefect flow.

Images are decoded by the shared decoder, scored in batches (images of one size per call, since a
batch is one array), and written as a results table (path, score, label, threshold, model version,
data md5, error) plus a heatmap overlay per image. An unreadable file becomes an error row and the
run goes on; the caller learns how many failed. Each scored image is also a row of the line's
production log (``production`` in params.yaml; padim_plugin.score_log).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from prefect import flow, get_run_logger

from padim_plugin.images import ImageDecodeError, decode_image
from padim_plugin.mvtec import is_image
from padim_plugin.score_log import ScoreLog, ScoreLogWriter, scored_rows
from padim_plugin.scoring import indices_by_shape, raw_image_threshold

from .config import ProductionParams, load_params
from .registry.registry import TAG, Registry, model_name

# score: normalised, the model's threshold at 0.5; raw_threshold: that threshold in raw score units
COLUMNS = ("image", "score", "label", "raw_threshold", "model_version", "data_md5", "heatmap", "error")


@dataclass
class ScoringReport:
    """What a batch-scoring run wrote."""

    table: Path
    scored: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason"


def list_images(sources: list[Path]) -> list[Path]:
    """Image files in ``sources`` (files, or folders searched recursively), in a stable order."""
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    files = [p for path in sources for p in (sorted(path.rglob("*")) if path.is_dir() else [path])
             if p.is_file() and (is_image(p) or not path.is_dir())]
    if not files:
        raise FileNotFoundError(f"no images to score in {', '.join(map(str, sources))}")
    return files


def production_log(root: Path, production: ProductionParams) -> ScoreLog | None:
    """The log ``production`` names, a folder under ``root`` or a URI; None when it names none."""
    if production.log is None:
        return None
    return ScoreLog(production.log if "://" in production.log else root / production.log)


def score_files(registry: Registry, line: str, files: list[Path], out: Path, alias: str = "champion",
                batch_size: int = 8, progress: Callable[[str], None] = print,
                production: ProductionParams | None = None) -> ScoringReport:
    """Score ``files`` with ``models:/padim-<line>@<alias>``; write ``out/scores.csv`` and heatmaps,
    and log each scored image as ``production`` says (nothing when None)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    uri = f"models:/{model_name(line)}@{alias}"
    version = registry.alias(line, alias)
    if version is None:
        raise KeyError(f"{model_name(line)} has no @{alias} in {registry.uri}")
    registry.require_data_only(line, str(version.version))
    model = mlflow.pyfunc.load_model(uri)
    threshold = raw_image_threshold(model.unwrap_python_model().model)
    data_md5 = version.tags.get(f"{TAG}data_md5", "")
    context = [f"{threshold:.6f}", str(version.version), data_md5]
    out.mkdir(parents=True, exist_ok=True)
    report = ScoringReport(out / "scores.csv")
    position = {path: index for index, path in enumerate(files)}
    log = None if production is None else production_log(registry.root, production)
    keep_images = production is not None and production.keep_images
    with report.table.open("w", newline="") as stream, \
            (nullcontext() if log is None else ScoreLogWriter(log, line)) as writer:
        table = csv.writer(stream)
        table.writerow(COLUMNS)
        done = 0
        for batch in _batches(files, batch_size):
            for path, error in batch.errors:
                table.writerow([str(path), "", "", *context, "", error])
                report.failed.append(f"{path}: {error}")
            for paths, images in batch.by_size():
                output = model.predict(images, params={"anomaly_map": "values"})  # for the heatmaps
                for index, path in enumerate(paths):
                    score, label = float(output["pred_score"][index]), int(output["pred_label"][index])
                    overlay = out / f"{position[path]:05d}_{path.stem}_heatmap.png"  # unique per file
                    table.writerow([str(path), f"{score:.6f}", label, *context, overlay.name, ""])
                    _save_overlay(images[index], output["anomaly_map"][index], overlay)
                if writer is not None:
                    writer.add(scored_rows(images, [str(path) for path in paths], output["pred_score"],
                                           output["pred_label"], str(version.version), data_md5, threshold,
                                           keep_images))
                report.scored += len(paths)
            done += batch.size
            progress(f"[{done}/{len(files)}] scored {report.scored}, failed {len(report.failed)} ({uri})")
    return report


@dataclass
class _Batch:
    images: list[tuple[Path, np.ndarray]]
    errors: list[tuple[Path, str]]

    @property
    def size(self) -> int:
        return len(self.images) + len(self.errors)

    def by_size(self) -> Iterator[tuple[list[Path], np.ndarray]]:
        """The decoded images grouped by shape, each group one array (N, H, W, 3)."""
        for indices in indices_by_shape([image.shape for _, image in self.images]).values():
            yield [self.images[i][0] for i in indices], np.stack([self.images[i][1] for i in indices])


def _batches(files: list[Path], batch_size: int) -> Iterator[_Batch]:
    for start in range(0, len(files), batch_size):
        batch = _Batch([], [])
        for path in files[start : start + batch_size]:
            try:
                batch.images.append((path, decode_image(path)))
            except ImageDecodeError as error:
                batch.errors.append((path, str(error).removeprefix(f"{path}: ")))
        yield batch


def _save_overlay(image: np.ndarray, anomaly_map: np.ndarray, path: Path) -> None:
    """The image with its normalised anomaly map blended in red (0.5 = the threshold)."""
    from PIL import Image

    heat = np.clip(anomaly_map, 0, 1)[..., None]
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255
    blended = image.astype(np.float32) * (1 - 0.6 * heat) + red * 0.6 * heat
    Image.fromarray(blended.round().astype(np.uint8)).save(path)


@flow(name="score-images", log_prints=True)
def score_images(line: str, source: str, out: str, alias: str = "champion", batch_size: int = 8,
                 root: str = ".") -> ScoringReport:
    """Scheduled batch inference: score every image under ``source`` with the line's ``alias``."""
    logger = get_run_logger()
    files = list_images([Path(source)])
    production = load_params(Path(root) / "params.yaml").line(line).production
    report = score_files(Registry(Path(root)), line, files, Path(out), alias, batch_size, logger.info,
                         production)
    if report.failed:
        logger.warning("%d file(s) could not be scored:\n%s", len(report.failed), "\n".join(report.failed))
    return report
