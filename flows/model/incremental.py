"""Retraining that costs what changed: a fit continues from the statistics an earlier fit kept.

Every fit keeps its statistics (:mod:`padim_plugin.statistics`) under
``.padim/statistics/<cache key>``, content-addressed like the fit itself (line, data version,
params, code), with the DVC listing of the training images that went into them. A later fit of
the line with the same statistics config (the params that shape the embeddings, and the code)
starts from the kept fit nearest to its data version: it embeds only the training images added
since and those removed, merges the first and subtracts the second (both exact), and so equals a
refit from all the images. It refits from all of them instead, and says why, when that embeds no
more images, when more of the kept images were removed than ``fit.max_removed_share`` allows, or
when the downdate would lose precision (:class:`padim_plugin.gaussian.UnsafeDowndateError`).

Only training images matter: validation and test images never enter the statistics (the
threshold and the metrics are computed afresh on every version).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from padim_plugin.gaussian import StreamingGaussian, UnsafeDowndateError
from padim_plugin.statistics import StatisticsError, load_statistics, read_metadata, save_statistics

from ..config import FitParams, LineParams
from ..data.store import DataStore, DataVersion, DataVersionError
from .fit import embed_statistics

logger = logging.getLogger(__name__)

STATISTICS = Path(".padim") / "statistics"
TRAIN_ROLE = "train/"
STALE_AFTER_S = 3600.0  # a half-written statistics folder this old was left by a killed process
# params applied after the statistics are complete: changing them keeps the statistics valid
AFTER_STATISTICS = {"epsilon", "top_k_percent", "pooling", "pooling_window"}


def statistics_config(params: LineParams, code_version: str) -> str:
    """Hash of what decides a training image's embedding: kept statistics with the same config
    can be merged with new ones."""
    settings = {"model": params.model.model_dump(exclude=AFTER_STATISTICS),
                "image_size": params.data.image_size}
    text = f"{json.dumps(settings, sort_keys=True, default=str)}|{code_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def training_images(listing: dict[str, str]) -> dict[str, str]:
    """The train role's part of a version's DVC listing: {path within the line: md5}."""
    return {path: md5 for path, md5 in listing.items() if path.startswith(TRAIN_ROLE)}


@dataclass(frozen=True)
class KeptFit:
    """Statistics kept from one fit, and what went into them."""

    key: str  # the fit's cache key
    folder: Path
    line: str
    config: str
    data_md5: str
    data_rev: str
    images: dict[str, str]  # training image (path within the line) -> md5
    n_bytes: int


@dataclass(frozen=True)
class RefitPlan:
    """Which kept fit a fit starts from (None: from all images), what it embeds, and why."""

    base: KeptFit | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FitReport:
    """How a fit went, for the run's log: ``path`` is "incremental", "full" or "kept" (this exact
    fit's statistics were kept already)."""

    path: str
    embedded: int
    added: int = 0
    removed: int = 0
    base_data_md5: str = ""
    reason: str = ""
    statistics_bytes: int = 0

    def as_tags(self) -> dict[str, str]:
        return {f"fit.{name}": str(value) for name, value in asdict(self).items()}

    def describe(self) -> str:
        return f"{self.path} fit, {self.embedded} image(s) embedded: {self.reason}"


def plan_refit(images: dict[str, str], kept: list[KeptFit], fit: FitParams) -> RefitPlan:
    """Start from the kept fit that needs the fewest images embedded, if that beats a full refit
    and removes no more than ``fit.max_removed_share`` of its images. Pure."""
    if not fit.incremental:
        return RefitPlan(None, reason="incremental fitting is off (fit.incremental: false)")
    if not kept:
        return RefitPlan(None, reason="no statistics kept from a fit of these params and code")
    plans = []
    for base in kept:
        added = tuple(sorted(path for path, md5 in images.items() if base.images.get(path) != md5))
        removed = tuple(sorted(path for path, md5 in base.images.items() if images.get(path) != md5))
        plans.append(RefitPlan(base, added, removed))
    best = min(plans, key=lambda plan: (len(plan.added) + len(plan.removed), plan.base.key))
    n_embedded, n_base = len(best.added) + len(best.removed), len(best.base.images)
    where = f"the fit of data {best.base.data_md5[:12]}"
    if n_embedded >= len(images):
        return RefitPlan(None, reason=f"continuing from {where} would embed {n_embedded} images, a refit"
                                      f" {len(images)}")
    if len(best.removed) > fit.max_removed_share * n_base:
        return RefitPlan(None, reason=f"{len(best.removed)} of the {n_base} images of {where} were removed,"
                                      f" more than fit.max_removed_share ({fit.max_removed_share:g})")
    return RefitPlan(best.base, best.added, best.removed,
                     f"from {where}: +{len(best.added)} -{len(best.removed)} training images")


class StatisticsStore:
    """Kept statistics under the project's cache, one folder per fit (its cache key)."""

    def __init__(self, root: Path) -> None:
        self.root = root / STATISTICS

    def folder(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> KeptFit | None:
        folder = self.folder(key)
        if not folder.is_dir():
            return None
        try:
            metadata = read_metadata(folder)
        except StatisticsError as error:
            logger.warning("ignoring kept statistics: %s", error)
            return None
        n_bytes = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        return KeptFit(key, folder, metadata["line"], metadata["config"], metadata["data_md5"],
                       metadata["data_rev"], metadata["images"], n_bytes)

    def kept(self, line: str, config: str | None = None) -> list[KeptFit]:
        """The line's kept fits (of one statistics config, if given)."""
        if not self.root.is_dir():
            return []
        found = (self.get(folder.name) for folder in sorted(self.root.iterdir())
                 if folder.is_dir() and not folder.name.startswith("."))
        return [fit for fit in found if fit is not None and fit.line == line
                and (config is None or fit.config == config)]

    def keep(self, key: str, gaussian: StreamingGaussian, params: LineParams, config: str,
             data: DataVersion, images: dict[str, str]) -> KeptFit:
        """Write the statistics of a fit (once: a folder appears whole, by one rename)."""
        metadata = {"line": params.name, "config": config, "data_md5": data.md5, "data_rev": data.rev or "",
                    "images": images}
        self.root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".partial-{key}-", dir=self.root))
        try:
            save_statistics(gaussian, partial / "statistics", metadata)
            self.adopt(key, partial / "statistics")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        kept = self.get(key)
        assert kept is not None  # just written
        return kept

    def adopt(self, key: str, folder: Path) -> None:
        """Move a complete statistics folder (written here, or downloaded) in as ``key``."""
        try:
            os.rename(folder, self.root / key)
        except OSError:  # kept by a concurrent fit of the same key already: the same statistics
            if not (self.root / key).is_dir():
                raise

    def load(self, kept: KeptFit) -> StreamingGaussian:
        return load_statistics(kept.folder)

    def collect_garbage(self, line: str, keep: set[str]) -> int:
        """Delete the line's kept statistics whose keys are not in ``keep``, and folders left
        half-written by killed fits or downloads; returns the bytes freed."""
        freed = 0
        for stale in self.root.glob(".*-*"):  # .partial-<key>-..., .download-...
            if time.time() - stale.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(stale, ignore_errors=True)
        for fit in self.kept(line):
            if fit.key not in keep:
                shutil.rmtree(fit.folder, ignore_errors=True)
                freed += fit.n_bytes
        return freed


def refit_statistics(params: LineParams, data: DataVersion, root: Path, work_dir: Path, key: str,
                     config: str) -> tuple[StreamingGaussian, FitReport]:
    """The statistics of the line's training images in ``data``: kept ones if this fit ran
    before, else continued from the nearest kept fit, else embedded from all images. Kept."""
    store = StatisticsStore(root)
    kept = store.get(key)
    if kept is not None:
        return store.load(kept), FitReport("kept", 0, reason="this fit's statistics were kept already",
                                           statistics_bytes=kept.n_bytes)
    images = training_images(DataStore(root).listing(params.name, data.rev or "HEAD"))
    plan = plan_refit(images, store.kept(params.name, config), params.fit)
    gaussian = None
    if plan.base is not None:
        try:
            gaussian = _continue_from(plan, params, root, data, work_dir, store)
            report = FitReport("incremental", len(plan.added) + len(plan.removed), len(plan.added),
                               len(plan.removed), plan.base.data_md5, plan.reason)
        except (UnsafeDowndateError, StatisticsError, DataVersionError, FileNotFoundError) as error:
            plan = RefitPlan(None, reason=f"{plan.reason}, but {error}")  # e.g. the base version is gone
    if gaussian is None:
        gaussian = embed_statistics(params, data.path, work_dir / "statistics")
        report = FitReport("full", gaussian.n_samples, reason=plan.reason)
    kept = store.keep(key, gaussian, params, config, data, images)
    return gaussian, FitReport(**(asdict(report) | {"statistics_bytes": kept.n_bytes}))


def _continue_from(plan: RefitPlan, params: LineParams, root: Path, data: DataVersion, work_dir: Path,
                   store: StatisticsStore) -> StreamingGaussian:
    """The kept statistics less the removed images (read from the base version) plus the added."""
    assert plan.base is not None  # callers check
    gaussian = store.load(plan.base)
    if plan.removed:
        base = DataStore(root).pull(params.name, plan.base.data_rev)
        removed = embed_statistics(params, base.path, work_dir / "removed", plan.removed)
        gaussian.subtract(removed, params.fit.min_kept_variance)
    if plan.added:
        gaussian.merge(embed_statistics(params, data.path, work_dir / "added", plan.added))
    return gaussian
