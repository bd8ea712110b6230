"""Which option set should be the default: every candidate on every line we can measure.

The lines, each staged into its roles by the stable hash exactly as ``padim-mlops data add`` does
(no git or DVC needed here), with the line's params from params.yaml:

- MTD: Magnetic Tile Defects as flat folders (all 952 normal images, 392 defect images with masks);
- MTD without masks: the same images and roles, labelled per image only;
- MTD at 128 px: with masks, at the image size of the demo lines and the real-data tests;
- brick, grass, gravel: the lines of ``make demo`` (gravel has no masks).

Each option set is fitted on the train role, calibrated on validation and evaluated on test through
the production path (flows.model.fit.fit_line, flows.model.evaluate.evaluate), with the line's
threshold rule. Reported: image AUROC, pixel AUROC, AUPRO, and at the threshold the false-alarm
rate on test normal images and the recall. Validation and test features are kept between option
sets of one backbone configuration and between splits (flows.model.features), so only the first
set of a line pays for embedding them. ``--split-seeds`` draws each line's roles again with other
seeds (``data.split.seed``), since one split's test set is small (the demo lines hold 14 test
defects) and its operating point rests on a few validation images; it adds a table of means.

    .venv/bin/python bench/defaults.py [--lines MTD brick ...] [--sets paper ...] [--out FILE]
                                       [--figures DIR]   # each run's test heatmap panel, as PNG
                                       [--split-seeds 0 1 2 ...]   # the roles drawn again
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from flows.config import LineParams, load_params  # noqa: E402
from flows.data.demo import DEMO_LINES, UNMASKED_LINES, generate_line  # noqa: E402
from flows.data.layout import from_separate_folders, stage  # noqa: E402
from flows.model.evaluate import evaluate  # noqa: E402
from flows.model.features import KeptFeatures  # noqa: E402
from flows.model.fit import fit_line  # noqa: E402
from flows.tune import with_options  # noqa: E402
from padim_plugin.presets import PRESETS  # noqa: E402
from tests.mtd import mtd_flat_folders  # noqa: E402

ALIGNED_PROJECTION = PRESETS["aligned"] | {"channel_reduction": "projection"}
OPTION_SETS: dict[str, dict[str, Any]] = {  # the presets, and the sets measured against them
    "paper": PRESETS["paper"],
    "aligned": PRESETS["aligned"],
    "projection": PRESETS["paper"] | {"channel_reduction": "projection"},
    "aligned + projection": ALIGNED_PROJECTION,
    "aligned + projection + top 1%": ALIGNED_PROJECTION | {"top_k_percent": 1.0},
}
# line -> (masks, image size): MTD at the paper's 256 px, and at the 128 px the demo lines and the
# real-data tests use
MTD_LINES = {"MTD": (True, 256), "MTD without masks": (False, 256), "MTD at 128 px": (True, 128)}
METRICS = (("image AUROC", "image_auroc", ".4f"), ("pixel AUROC", "pixel_auroc", ".4f"),
           ("AUPRO", "pixel_aupro", ".4f"), ("false alarms (test)", "test_normal_fpr", ".3f"),
           ("recall (test)", "image_recall", ".3f"))


Sources = tuple[Path, Path, Path | None]  # folders of normal images, defect images, masks


def line_sources(line: str, scratch: Path) -> Sources:
    """The line's images as they arrive: separate folders of normal and defect images (and masks)."""
    if line in MTD_LINES:
        return mtd_flat_folders(scratch / "sources" / line, MTD_LINES[line][0])
    folders = generate_line(line, scratch / "sources" / line, masks=line not in UNMASKED_LINES)
    return folders.normal, folders.defects, folders.masks


def staged_line(line: str, sources: Sources, scratch: Path, split_seed: int = 0) -> Path:
    """The line's images in their roles (MVTec layout), as data add would stage them."""
    data = scratch / "data" / f"{line} split {split_seed}"
    stage(from_separate_folders(*sources, line_params(line, split_seed).data.split), data)
    return data


def line_params(line: str, split_seed: int = 0) -> LineParams:
    """The demo line's params from params.yaml, MTD's the defaults at its image size; the roles
    drawn with ``split_seed``."""
    params = load_params(BENCH.parent / "params.yaml")
    chosen = params.line(line) if line in DEMO_LINES else params.line_or_defaults("mtd")
    data = chosen.data.model_dump()
    data["split"]["seed"] = split_seed
    if line in MTD_LINES:
        data["image_size"] = MTD_LINES[line][1]
    return LineParams.model_validate(chosen.model_dump() | {"data": data})


def measure(line: str, split_seed: int, data: Path, options: dict[str, Any], kept: KeptFeatures,
            work: Path, figures: Path | None) -> dict[str, Any]:
    params = with_options(line_params(line, split_seed), options)
    started = time.perf_counter()
    model, calibration = fit_line(params, data, work, kept=kept)
    evaluation = evaluate(model, params, data, work, kept)
    seconds = time.perf_counter() - started
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        name = f"{_slug(line)}-split-{split_seed}-{_slug(work.name)}.png"
        shutil.copyfile(evaluation.figures["heatmaps"], figures / name)
    return {"seconds": seconds, "threshold_rule": calibration.image_rule,
            **{key: evaluation.metrics.get(key) for _, key, _ in METRICS}}


def _slug(name: str) -> str:
    return "-".join(word for word in name.lower().replace("%", "pct").split() if word != "+")


Results = dict[str, dict[int, dict[str, dict[str, Any]]]]  # line -> split seed -> option set -> row


def table(results: Results) -> str:
    """Every run: a line, the seed of its roles, an option set."""
    lines = ["| line | split seed | options | " + " | ".join(title for title, _, _ in METRICS) + " |",
             "|---|---:|---|" + "---:|" * len(METRICS)]
    for line, splits in results.items():
        for seed, rows in splits.items():
            for name, row in rows.items():
                cells = ["n/a" if row[key] is None else f"{row[key]:{fmt}}" for _, key, fmt in METRICS]
                lines.append(f"| {line} | {seed} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: Results) -> str:
    """Each metric's mean over the splits, and on how many splits the set was at least as good as
    the first set measured (the paper's, by default) on image AUROC."""
    lines = ["| line | options | splits | " + " | ".join(f"mean {title}" for title, _, _ in METRICS)
             + " | image AUROC >= first set's |", "|---|---|---:|" + "---:|" * (len(METRICS) + 1)]
    for line, splits in results.items():
        names = list(next(iter(splits.values())))
        for name in names:
            cells = []
            for _, key, fmt in METRICS:
                values = [rows[name][key] for rows in splits.values() if rows[name][key] is not None]
                cells.append(f"{sum(values) / len(values):{fmt}}" if values else "n/a")
            as_good = sum(rows[name]["image_auroc"] >= rows[names[0]]["image_auroc"]
                          for rows in splits.values())
            lines.append(f"| {line} | {name} | {len(splits)} | " + " | ".join(cells)
                         + f" | {as_good} of {len(splits)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = [*MTD_LINES, *sorted(DEMO_LINES)]
    parser.add_argument("--lines", nargs="+", default=choices, choices=choices)
    parser.add_argument("--sets", nargs="+", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "defaults.json")
    parser.add_argument("--figures", type=Path, help="write each run's test heatmap panel here")
    parser.add_argument("--split-seeds", nargs="+", type=int, default=[0],
                        help="draw each line's roles with these seeds (data.split.seed; 0 is params.yaml's)")
    args = parser.parse_args(argv)
    results: Results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="padim-defaults-") as scratch:
        root = Path(scratch)
        for line in args.lines:
            results[line] = {}
            kept = KeptFeatures(root / "project", line, "bench")  # an image's maps, whatever its role
            sources = line_sources(line, root)
            for seed in args.split_seeds:
                data = staged_line(line, sources, root, seed)
                results[line][seed] = {}
                for name in args.sets:
                    work = root / "work" / line / str(seed) / name
                    row = measure(line, seed, data, OPTION_SETS[name], kept, work, args.figures)
                    results[line][seed][name] = row
                    print(line, seed, name, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{time.perf_counter() - started:.0f} s\n\n{table(results)}")
    if len(args.split_seeds) > 1:
        print(f"\n{summary(results)}")


if __name__ == "__main__":
    main()
