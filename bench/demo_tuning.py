"""Per-line tuning on the demo lines: the options `padim-mlops tune` picks on validation, and what
they give on test beside the paper's model (the "beyond anomalib's accuracy" issue's demo targets).

Each demo line is generated and staged into its roles exactly as `padim-mlops data demo` does (no
git or DVC needed here), with the line's params from params.yaml. The grid is scored on validation
(flows.tune.score_options); then the paper's options and the winner are each fitted, calibrated
and evaluated on test (flows.model.fit.fit_line, flows.model.evaluate.evaluate).

    .venv/bin/python bench/demo_tuning.py [--lines brick grass gravel]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from flows.config import load_params  # noqa: E402
from flows.data.demo import DEMO_LINES, UNMASKED_LINES, generate_line  # noqa: E402
from flows.data.layout import from_separate_folders, stage  # noqa: E402
from flows.model.evaluate import evaluate  # noqa: E402
from flows.model.fit import fit_line  # noqa: E402
from flows.tune import EMBEDDINGS, POOLINGS, SCORE_RULES, best, score_options, with_options  # noqa: E402

PAPER = {"layers": None} | EMBEDDINGS[0] | POOLINGS[0] | SCORE_RULES[0]  # the demo lines' layers


def test_metrics(params, data, work: Path) -> dict[str, float]:
    model, _ = fit_line(params, data, work)
    return evaluate(model, params, data, work).metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", nargs="+", default=sorted(DEMO_LINES), choices=sorted(DEMO_LINES))
    args = parser.parse_args(argv)
    project = load_params(BENCH.parent / "params.yaml")
    rows = []
    with tempfile.TemporaryDirectory(prefix="padim-demo-tuning-") as scratch:
        for line in args.lines:
            params = with_options(project.line_or_defaults(line), PAPER)
            folders = generate_line(line, Path(scratch) / "sources" / line, masks=line not in UNMASKED_LINES)
            data = Path(scratch) / "data" / line
            split = params.data.split
            stage(from_separate_folders(folders.normal, folders.defects, folders.masks, split), data)
            started = time.perf_counter()
            grid = score_options(params, data, Path(scratch) / "tune" / line)
            tune_seconds = time.perf_counter() - started
            paper_validation = next(point for point in grid if point.options == PAPER)
            winner = best(grid)
            work = Path(scratch) / "work" / line
            paper = test_metrics(params, data, work / "paper")
            tuned = test_metrics(with_options(params, winner.options), data, work / "tuned")
            rows.append((line, winner, paper_validation, paper, tuned, tune_seconds))
            print(line, winner.options, paper.get("image_auroc"), tuned.get("image_auroc"), flush=True)
    print("\n| line | chosen on validation | val. image AUROC paper / chosen | test image AUROC paper |"
          " test image AUROC chosen | change | test pixel AUROC paper / chosen | tune s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for line, winner, paper_validation, paper, tuned, seconds in rows:
        options = ", ".join(f"{key}={value}" for key, value in winner.options.items() if PAPER[key] != value)
        pixel = (f"{paper['pixel_auroc']:.4f} / {tuned['pixel_auroc']:.4f}" if "pixel_auroc" in paper
                 else "no masks")
        print(f"| {line} | {options or 'the paper'} | {paper_validation.image_auroc:.4f} /"
              f" {winner.image_auroc:.4f} | {paper['image_auroc']:.4f} | {tuned['image_auroc']:.4f} |"
              f" {tuned['image_auroc'] - paper['image_auroc']:+.4f} | {pixel} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
