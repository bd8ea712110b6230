"""Which option set should be the default: every candidate on every line we can measure.

The lines, each staged into its roles by the stable hash exactly as ``padim-mlops data add`` does
(no git or DVC needed here), with the line's params from params.yaml:

- MTD: Magnetic Tile Defects as flat folders (all 952 normal images, 392 defect images with masks);
- MTD without masks: the same images and roles, labelled per image only;
- brick, grass, gravel: the lines of ``make demo`` (gravel has no masks).

Each option set is fitted on the train role, calibrated on validation and evaluated on test through
the production path (flows.model.fit.fit_line, flows.model.evaluate.evaluate), with the line's
threshold rule. Reported: image AUROC, pixel AUROC, AUPRO, and at the threshold the false-alarm
rate on test normal images and the recall. Validation and test features are kept between option
sets of one backbone configuration (flows.model.features), so only the first set of a line pays
for embedding them.

    .venv/bin/python bench/defaults.py [--lines MTD brick ...] [--sets paper ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
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
from tests.mtd import mtd_flat_folders  # noqa: E402

PAPER: dict[str, Any] = {"align_maps": False, "channel_reduction": "random_subset", "top_k_percent": None}
ALIGNED_PROJECTION = {"align_maps": True, "channel_reduction": "projection", "top_k_percent": None}
OPTION_SETS: dict[str, dict[str, Any]] = {
    "paper": PAPER,
    "aligned": PAPER | {"align_maps": True},
    "projection": PAPER | {"channel_reduction": "projection"},
    "aligned + projection": ALIGNED_PROJECTION,
    "aligned + projection + top 1%": ALIGNED_PROJECTION | {"top_k_percent": 1.0},
}
MTD_LINES = {"MTD": True, "MTD without masks": False}  # line -> masks
METRICS = (("image AUROC", "image_auroc", ".4f"), ("pixel AUROC", "pixel_auroc", ".4f"),
           ("AUPRO", "pixel_aupro", ".4f"), ("false alarms (test)", "test_normal_fpr", ".3f"),
           ("recall (test)", "image_recall", ".3f"))


def staged_line(line: str, scratch: Path) -> Path:
    """The line's images in their roles (MVTec layout), as data add would stage them."""
    params = load_params(BENCH.parent / "params.yaml").line_or_defaults(_params_name(line))
    if line in MTD_LINES:
        normal, defects, masks = mtd_flat_folders(scratch / "sources" / line, MTD_LINES[line])
    else:
        folders = generate_line(line, scratch / "sources" / line, masks=line not in UNMASKED_LINES)
        normal, defects, masks = folders.normal, folders.defects, folders.masks
    data = scratch / "data" / line
    stage(from_separate_folders(normal, defects, masks, params.data.split), data)
    return data


def _params_name(line: str) -> str:
    return line if line in DEMO_LINES else "mtd"


def measure(line: str, data: Path, options: dict[str, Any], kept: KeptFeatures, work: Path) -> dict[str, Any]:
    params: LineParams = load_params(BENCH.parent / "params.yaml").line_or_defaults(_params_name(line))
    params = with_options(params, options)
    started = time.perf_counter()
    model, calibration = fit_line(params, data, work, kept=kept)
    metrics = evaluate(model, params, data, work, kept).metrics
    return {"seconds": time.perf_counter() - started, "threshold_rule": calibration.image_rule,
            **{key: metrics.get(key) for _, key, _ in METRICS}}


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = ["| line | options | " + " | ".join(title for title, _, _ in METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for line, rows in results.items():
        for name, row in rows.items():
            cells = ["n/a" if row[key] is None else f"{row[key]:{fmt}}" for _, key, fmt in METRICS]
            lines.append(f"| {line} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = [*MTD_LINES, *sorted(DEMO_LINES)]
    parser.add_argument("--lines", nargs="+", default=choices, choices=choices)
    parser.add_argument("--sets", nargs="+", default=list(OPTION_SETS), choices=list(OPTION_SETS))
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "defaults.json")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="padim-defaults-") as scratch:
        root = Path(scratch)
        for line in args.lines:
            data = staged_line(line, root)
            kept = KeptFeatures(root / "project", line, "bench")
            results[line] = {}
            for name in args.sets:
                row = measure(line, data, OPTION_SETS[name], kept, root / "work" / line / name)
                results[line][name] = row
                print(line, name, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{time.perf_counter() - started:.0f} s\n\n{table(results)}")


if __name__ == "__main__":
    main()
