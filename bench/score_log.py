"""What the production score log costs: ``padim-mlops predict``'s throughput with and without it.

Scores the line's test images with its champion (a project with one: ``make demo`` makes it)
through ``flows.batch.score_files``, the code behind ``predict`` and the ``score-images`` flow:
once without a log, once logging every image (its pixels hashed, a row buffered, a Parquet file
per 256 rows) to a log in a temporary folder; the two alternate for ``--repeats`` rounds.
Prints images/s of each and their ratio::

    .venv/bin/python bench/score_log.py --root DEMO --line brick [--repeats 5] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from flows.batch import score_files
from flows.config import ProductionParams
from flows.registry.registry import Registry, model_name
from padim_plugin.mvtec import is_image
from padim_plugin.score_log import ScoreLog


def silent(message: str) -> None:
    """No progress lines between the timed rounds."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project with a champion")
    parser.add_argument("--line", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    registry = Registry(args.root)
    if registry.champion(args.line) is None:
        raise SystemExit(f"{model_name(args.line)} has no @champion under {args.root}")
    files = sorted(p for p in (args.root / "data" / args.line / "test").rglob("*") if is_image(p))
    seconds: dict[str, list[float]] = {"without the log": [], "with the log": []}
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "log"
        settings = {"without the log": ProductionParams(log=None),
                    "with the log": ProductionParams(log=str(log))}
        score_files(registry, args.line, files[: args.batch_size], Path(scratch) / "warm", progress=silent,
                    production=settings["without the log"])
        for repeat in range(args.repeats):
            for name, production in settings.items():
                started = time.perf_counter()
                score_files(registry, args.line, files, Path(scratch) / f"{repeat}",
                            batch_size=args.batch_size, progress=silent, production=production)
                seconds[name].append(time.perf_counter() - started)
        logged = ScoreLog(log).read(args.line).num_rows
    if logged != args.repeats * len(files):
        raise SystemExit(f"the log holds {logged} rows, not {args.repeats * len(files)}")
    rates = {name: len(files) / statistics.median(values) for name, values in seconds.items()}
    print(f"{model_name(args.line)}@champion, {len(files)} images, batches of {args.batch_size},"
          f" median of {args.repeats} alternating rounds")
    print("| scoring | images/s | ratio to no log |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / rates['without the log']:.3f} |")


if __name__ == "__main__":
    main()
