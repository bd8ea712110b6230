"""Incremental refits against full refits, on a line of 2,286 normal Magnetic Tile Defects images.

The line's first version has MTD's 762 training images three times over (as they are, mirrored
left-right and top-bottom: distinct files) and MTD's test set; it is imported with
``padim-mlops data add`` into a scratch project (roles by the stable hash, as in production) and
fitted from all images, keeping its statistics. Then two new versions, each the first plus
new normal images (MTD training images turned by 90 degrees): +1% and +10%. Each is fitted twice
through :func:`flows.model.incremental.refit_statistics`, the function the retrain flow calls:

- incremental: from the first version's kept statistics (only the added images are embedded),
  and calibrated and evaluated from the validation and test features the first fit kept
  (flows.model.features: the backbone runs only on the images added there);
- full: ``fit.incremental: false`` and ``fit.keep_features: false`` (every image embedded).

"fit s" covers what the retrain's fit step does: choosing the base, loading the kept statistics,
decoding and embedding images, merging, keeping the new statistics, and fitting the Gaussians
(factorisation). Calibration (validation) and evaluation (test) are timed apart ("eval s"); "whole
s" is both, and "whole incremental / full" their ratio. The metrics of both must agree. Peak RSS
growth during each fit is sampled (bench/padim_vs_anomalib.RssProbe); "kept features MB" is the
size of the line's kept validation and test features after the fit.
efficientnet_lite0, 100 channels, 256 px, batch 32, CPU::

    .venv/bin/python bench/incremental_refit.py [--data PATH] [--out DIR] [--additions 0.01 0.1]

A markdown table is printed; raw figures go to ``DIR/incremental_refit.json`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from flows.cli import main as cli
from flows.config import LineParams, load_params
from flows.data.store import DataStore
from flows.model.evaluate import evaluate
from flows.model.fit import fit_line, model_from_statistics
from flows.model.incremental import StatisticsStore, refit_statistics, statistics_config
from flows.retrain import code_version, kept_features

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]  # neither tests/ nor bench/ is an installed package

from padim_vs_anomalib import RssProbe  # noqa: E402

from tests.mtd import MTD  # noqa: E402
from tests.projects import init_project  # noqa: E402

LINE = "tiles"
COPIES = {"": None, "-lr": Image.Transpose.FLIP_LEFT_RIGHT, "-tb": Image.Transpose.FLIP_TOP_BOTTOM}
PARAMS = {"model": {"backbone": "efficientnet_lite0", "n_features": 100},
          "data": {"image_size": 256, "train_batch_size": 32, "eval_batch_size": 32}}
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1")


def write_version(target: Path, mtd: Path, n_new: int) -> Path:
    """MVTec layout: train/good = MTD's training images three times over plus ``n_new`` turned
    ones; test = MTD's test set (links) with its masks."""
    originals = sorted((mtd / "train" / "good").iterdir())
    good = target / "train" / "good"
    good.mkdir(parents=True)
    for image in originals:
        for suffix, transpose in COPIES.items():
            name = good / f"{image.stem}{suffix}.png"
            if transpose is None:
                (good / f"{image.stem}{image.suffix}").symlink_to(image)
            else:
                Image.open(image).transpose(transpose).save(name)
    for image in originals[:n_new]:
        Image.open(image).transpose(Image.Transpose.ROTATE_90).save(good / f"{image.stem}-turned.png")
    for folder in ("test", "ground_truth"):
        for source in sorted((mtd / folder).rglob("*.*")):
            link = target / folder / source.relative_to(mtd / folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
    return target


def add_version(root: Path, source: Path) -> None:
    if cli(["--root", str(root), "data", "add", LINE, str(source)]):
        raise RuntimeError(f"padim-mlops data add {LINE} {source} failed (see stderr)")


def timed_fit(params: LineParams, root: Path, key: str) -> dict[str, Any]:
    """One fit step as the retrain flow runs it; its figures, model and calibration metrics."""
    data = DataStore(root).pull(LINE)
    work = root / ".padim" / "runs" / key
    with RssProbe(torch.device("cpu")) as memory:
        started = time.perf_counter()
        statistics, report = refit_statistics(params, data, root, work, key,
                                              statistics_config(params, code_version()))
        model_from_statistics(params, statistics)
        seconds = time.perf_counter() - started
    started = time.perf_counter()
    kept = kept_features(root, params)
    model, _ = fit_line(params, data.path, work, statistics, kept)
    metrics = evaluate(model, params, data.path, work, kept).metrics
    evaluation_s = time.perf_counter() - started
    return {"fit_s": seconds, "calibration_and_evaluation_s": evaluation_s, "whole_s": seconds + evaluation_s,
            "kept_features_bytes": kept.n_bytes() if kept else 0,
            "path": report.path, "embedded": report.embedded, "added": report.added,
            "reason": report.reason, "train_images": statistics.n_samples,
            "statistics_bytes": report.statistics_bytes,
            "fit_memory_growth_bytes": memory.peak - memory.before,
            "metrics": {name: metrics.get(name) for name in METRICS}}


def make_project(root: Path) -> None:
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())["defaults"]
    for section, values in PARAMS.items():
        defaults[section] |= values
    lines = {LINE: {}, f"{LINE}-full": {"fit": {"incremental": False, "keep_features": False}}}
    init_project(root, root.parent / "remote", yaml.safe_dump({"defaults": defaults, "lines": lines}))


def run(mtd: Path, additions: Sequence[float], scratch: Path) -> dict[str, Any]:
    root = scratch / "project"
    make_project(root)
    project = load_params(root / "params.yaml")
    incremental = project.line(LINE)
    full = project.line(f"{LINE}-full").model_copy(update={"name": LINE})
    n_first = 3 * len(list((mtd / "train" / "good").iterdir()))
    add_version(root, write_version(scratch / "v0", mtd, 0))
    results: dict[str, Any] = {"first": timed_fit(incremental, root, "first")}  # nothing kept yet: a full fit
    base = StatisticsStore(root).get("first")
    for share in additions:
        n_new = round(share * n_first)
        add_version(root, write_version(scratch / f"v{n_new}", mtd, n_new))
        store = StatisticsStore(root)
        store.collect_garbage(LINE, {base.key})  # each new version continues from the first one
        row = {"share": share, "new_normal_images": n_new,
               "incremental": timed_fit(incremental, root, f"incremental-{n_new}"),
               "full": timed_fit(full, root, f"full-{n_new}")}
        row["incremental_over_full"] = row["incremental"]["fit_s"] / row["full"]["fit_s"]
        row["whole_incremental_over_full"] = row["incremental"]["whole_s"] / row["full"]["whole_s"]
        results[f"+{share:.0%}"] = row
        print(json.dumps(row, indent=1), flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| version | fit asked | fit taken | images embedded | train images | fit s | incremental / full"
            " | eval s | whole s | whole incremental / full | fit RSS growth MB | kept features MB"
            " | image AUROC | pixel AUROC | AUPRO |", "|" + "---|" * 15]

    def row(name: str, kind: str, figures: dict[str, Any], ratios: tuple[str, str]) -> str:
        metrics = " | ".join(f"{figures['metrics'][m]:.4f}" for m in METRICS[:3])
        growth = figures["fit_memory_growth_bytes"] / 2**20
        evaluation = figures["calibration_and_evaluation_s"]
        return (f"| {name} | {kind} | {figures['path']} | {figures['embedded']} |"
                f" {figures['train_images']} | {figures['fit_s']:.1f} | {ratios[0]} | {evaluation:.1f}"
                f" | {figures['whole_s']:.1f} | {ratios[1]} | {growth:.0f}"
                f" | {figures['kept_features_bytes'] / 2**20:.0f} | {metrics} |")

    rows.append(row("first", "incremental", results["first"], ("", "")))
    for name, result in results.items():
        if not name.startswith("+"):
            continue
        whole = result["whole_incremental_over_full"]
        ratios = (f"{result['incremental_over_full']:.3f}", f"**{whole:.3f}**")
        rows.append(row(name, "incremental", result["incremental"], ratios))
        rows.append(row(name, "full", result["full"], ("", "")))
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=MTD)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--additions", type=float, nargs="+", default=[0.01, 0.1])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="incremental-refit-") as scratch:
        started = time.perf_counter()
        results = run(args.data, args.additions, Path(scratch))
        results["total_s"] = time.perf_counter() - started
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "incremental_refit.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
