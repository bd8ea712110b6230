"""Accuracy options of StreamingPadim on MTD (the "beyond anomalib's accuracy" issue), side by side.

Magnetic Tile Defects in its published split (762 normal training images, 582 test images),
efficientnet_lite0, 100 channels, 256 px, batch 32. Every option set is measured by
padim_vs_anomalib.py's own worker, in a fresh process each: fit seconds and fit RSS growth, then
image AUROC, pixel AUROC and AUPRO on the test split; anomalib's Padim is the reference row. Fit
memory is measured again at 100 training images, so that flat memory can be read off (growth at
762 vs at 100). The options:

- pooling: the paper's per-position Gaussians, or each pooled over a 3x3 / 5x5 neighbourhood;
- channel_reduction: the paper's random subset, or a semi-orthogonal projection of all channels;
- align_maps: cells and map placed where the backbone's features look (padim_plugin.alignment);
- top_k_percent: image score as the mean of the map's top 1% pixels instead of its maximum;
- layers: the backbone's deeper stages (strides 8, 16, 32) instead of the paper's (4, 8, 16);
- n_features: more channels kept (200 of the deeper stages' 472, or all 176 of the default ones).

    .venv/bin/python bench/accuracy_options.py [--data PATH] [--n-train N] [--only NAME ...] [--no-reference]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import padim_vs_anomalib as pva  # noqa: E402

from padim_plugin.backbones import DEEPER_LAYERS  # noqa: E402

PAPER: dict[str, Any] = {}
ALIGNED_PROJECTION = {"align_maps": True, "channel_reduction": "projection"}
OPTION_SETS: dict[str, dict[str, Any]] = {
    "paper (per position, random subset)": PAPER,
    "top 1% image score": {"top_k_percent": 1.0},
    "neighbourhood 3x3": {"pooling": "neighbourhood"},
    "neighbourhood 5x5": {"pooling": "neighbourhood", "pooling_window": 5},
    "projection": {"channel_reduction": "projection"},
    "aligned maps": {"align_maps": True},
    "aligned + projection": ALIGNED_PROJECTION,
    "aligned + projection + neighbourhood 3x3": ALIGNED_PROJECTION | {"pooling": "neighbourhood"},
    "deeper layers (blocks.2, .4, .6)": {"layers": list(DEEPER_LAYERS["efficientnet_lite0"])},
    "deeper layers + shared": {"layers": list(DEEPER_LAYERS["efficientnet_lite0"]), "pooling": "shared"},
    "deeper layers + aligned + projection": {"layers": list(DEEPER_LAYERS["efficientnet_lite0"])}
    | ALIGNED_PROJECTION,
    "deeper layers + aligned + projection to 200": {"layers": list(DEEPER_LAYERS["efficientnet_lite0"]),
                                                     "n_features": 200} | ALIGNED_PROJECTION,
    "aligned + all 176 channels": {"align_maps": True, "n_features": None},
}
MIB = 2**20


def spec(args: argparse.Namespace, model: str, n_train: int, options: dict[str, Any],
         max_test: int | None = None) -> pva.RunSpec:
    return pva.RunSpec(model=model, backbone="efficientnet_lite0", n_train=n_train, device="cpu",
                       synthetic=False, data=str(args.data), max_test=max_test, batch_size=32,
                       threads=pva.available_cores(), repeats=1, options=options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=pva.DEFAULT_DATA)
    parser.add_argument("--n-train", type=int, default=762)
    parser.add_argument("--only", nargs="+", choices=list(OPTION_SETS), default=list(OPTION_SETS),
                        help="option sets to run (the paper's always runs: the ratios need it)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip anomalib's Padim (a rerun of some options)")
    parser.add_argument("--out", type=Path, default=BENCH / "results/accuracy_options.json")
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, Any]] = {}
    if not args.no_reference:
        rows["anomalib Padim (reference)"] = pva.run_isolated(spec(args, "anomalib", args.n_train, PAPER))
    chosen = [name for name in OPTION_SETS if name in args.only or OPTION_SETS[name] is PAPER]
    for name, options in ((name, OPTION_SETS[name]) for name in chosen):
        rows[name] = pva.run_isolated(spec(args, "ours", args.n_train, options))
        small = pva.run_isolated(spec(args, "ours", 100, options, max_test=32))
        rows[name]["fit_memory_growth_bytes_at_100"] = small.get("fit_memory_growth_bytes")
        print(name, json.dumps({k: v for k, v in rows[name].items() if not isinstance(v, list)}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    paper = rows["paper (per position, random subset)"]
    print(f"\nMTD: fit on {args.n_train}, 582 test images; efficientnet_lite0/100 @256, batch 32,"
          f" {pva.available_cores()} threads\n")
    print("| options | image AUROC | pixel AUROC | AUPRO | fit s | fit s / paper's | fit RSS growth MiB"
          f" (N={args.n_train} / N=100) |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | {row['error']} |")
            continue
        growth = row["fit_memory_growth_bytes"] / MIB
        at_100 = row.get("fit_memory_growth_bytes_at_100")
        small = "n/a" if at_100 is None else f"{at_100 / MIB:.0f}"
        print(f"| {name} | {row['image_auroc']:.4f} | {row['pixel_auroc']:.4f} | {row['pixel_aupro']:.4f} |"
              f" {row['fit_s']:.1f} | {row['fit_s'] / paper['fit_s']:.2f} | {growth:.0f} / {small} |")
    if "anomalib Padim (reference)" in rows:
        reference = rows["anomalib Padim (reference)"]
        ratio = paper["image_auroc"] / reference["image_auroc"]
        print(f"\nimage AUROC, paper's model / anomalib's: {ratio:.4f}")


if __name__ == "__main__":
    main()
