"""How often the monitor (flows.monitor.checks) raises an alarm on real images, drifted and not.

MTD (Magnetic Tile Defects) is staged as ``padim-mlops data add`` would stage it, with a split that
holds back a third of its normal images (train 0.45, validation 0.2; the rest is test), fitted at
128 px with the line defaults and calibrated on validation, exactly as the retrain flow does. The
reference the fit keeps (flows.monitor.reference) is built from that model.

Production is the test role's normal images, which the fit never saw: unchanged, and under each
synthetic drift (brightness -20% and +20%, a Gaussian blur of radius 2, a rotation of 10 degrees,
JPEG at quality 30, and another product: the demo line brick's normal images). Each image is
scored once per condition by the model; windows of 50 and of 200 images are then drawn from the
condition's pool (without replacement, ``--resamples`` times) and judged with the default
``production.monitor`` settings. All of it is repeated for each of ``--split-seeds``: windows
drawn from one pool of a few hundred images share most of their images, so one split alone
measures that pool against that reference more than the monitor. The table gives, per condition
and window size, the share of windows (over every split) judged warn or drift, judged drift (the
outcome that raises the event padim.line.drift: on unchanged windows, the false-alarm rate), and
flagged by each check (its Bonferroni-corrected p-value under warn_p).

anomalib has no drift monitoring, so there is no reference implementation to print beside it.

    .venv/bin/python bench/monitoring.py [--resamples 200] [--split-seeds 0 1 2] [--seed 0] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from flows.config import LineParams, MonitorParams, load_params  # noqa: E402
from flows.data.demo import DemoSize, generate_line  # noqa: E402
from flows.data.layout import from_separate_folders, stage  # noqa: E402
from flows.model.fit import fit_line  # noqa: E402
from flows.monitor.checks import DRIFT, OK, TOO_FEW, Window, judge  # noqa: E402
from flows.monitor.reference import MonitoringReference, build_reference  # noqa: E402
from padim_plugin.image_statistics import STATISTICS, image_statistics  # noqa: E402
from padim_plugin.images import decode_image  # noqa: E402
from padim_plugin.scoring import score_images  # noqa: E402
from tests.mtd import mtd_flat_folders  # noqa: E402

WINDOWS = (50, 200)
CHECKS = ("alarm rate", "normal scores", *STATISTICS)


def _pil(transform: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda pixels: np.asarray(transform(Image.fromarray(pixels)).convert("RGB"))


def _jpeg(image: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _rotate(image: Image.Image, degrees: float = 10) -> Image.Image:
    grey = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))  # corners: the mean
    return image.rotate(degrees, Image.Resampling.BICUBIC, fillcolor=grey)


DRIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "brightness -20%": lambda pixels: np.clip(pixels * 0.8, 0, 255).astype(np.uint8),
    "brightness +20%": lambda pixels: np.clip(pixels * 1.2, 0, 255).astype(np.uint8),
    "blur (Gaussian, radius 2)": _pil(lambda image: image.filter(ImageFilter.GaussianBlur(2))),
    "rotation 10 degrees": _pil(_rotate),
    "JPEG quality 30": _pil(_jpeg),
}


def mtd_params() -> LineParams:
    defaults = load_params(BENCH.parent / "params.yaml").line_or_defaults("mtd")
    data = defaults.data.model_dump()
    data["image_size"] = 128
    data["split"] |= {"train": 0.45, "validation": 0.2}
    return LineParams.model_validate(defaults.model_dump() | {"data": data})


def scored_pool(model: object, images: list[np.ndarray]) -> Window:
    """Every image of a condition, scored and measured once."""
    scores, labels = [], []
    for start in range(0, len(images), 32):
        reply = score_images(model, images[start:start + 32])
        scores.append(reply["pred_score"])
        labels.append(reply["pred_label"])
    measured = [image_statistics(image) for image in images]
    return Window(np.concatenate(scores).astype(np.float64), np.concatenate(labels).astype(int),
                  {name: np.array([row[name] for row in measured]) for name in STATISTICS})


def rates(pool: Window, size: int, reference: MonitoringReference, settings: MonitorParams, resamples: int,
          rng: np.random.Generator) -> dict[str, float]:
    """Shares of ``resamples`` windows of ``size`` images from ``pool``: alarmed, drift, per check."""
    replace = len(pool) < size
    counts = dict.fromkeys(("alarm", "drift", *CHECKS, "too few"), 0)
    for _ in range(resamples):
        chosen = rng.choice(len(pool), size, replace=replace)
        window = Window(pool.scores[chosen], pool.labels[chosen],
                        {name: values[chosen] for name, values in pool.statistics.items()})
        report = judge(window, reference, settings)
        counts["too few"] += report.outcome == TOO_FEW
        counts["alarm"] += report.outcome not in (OK, TOO_FEW)
        counts["drift"] += report.outcome == DRIFT
        for check in report.checks:
            counts[check.name] += min(1.0, check.p_value * len(report.checks)) < settings.warn_p
    return {name: count / resamples for name, count in counts.items()} | {"with replacement": replace}


def condition_pools(params: LineParams, split_seed: int,
                    scratch: Path) -> tuple[MonitoringReference, dict[str, Window], int]:
    """Fit MTD with its roles drawn by ``split_seed``; its reference, and every condition's pool."""
    params = params.model_copy(update={"data": params.data.model_copy(update={
        "split": params.data.split.model_copy(update={"seed": split_seed})})})
    data = scratch / f"mtd-{split_seed}"
    sources = scratch / "sources"
    folders = mtd_flat_folders(sources, True) if not sources.is_dir() else (
        sources / "normal", sources / "defects", sources / "masks")
    stage(from_separate_folders(*folders, params.data.split), data)
    model, _ = fit_line(params, data, scratch / f"work-{split_seed}")
    reference = build_reference(model, data)
    model.eval()  # scored as served: the post-processor labels and normalises
    held_out = [decode_image(path) for path in sorted((data / "test" / "good").iterdir())]
    pools = {"unchanged": scored_pool(model, held_out)}
    for name, drift in DRIFTS.items():
        pools[name] = scored_pool(model, [drift(image) for image in held_out])
    brick = scratch / "brick"
    if not brick.is_dir():
        generate_line("brick", brick, DemoSize(normal=200), masks=False)
    pools["another product (brick)"] = scored_pool(
        model, [decode_image(path) for path in sorted((brick / "normal").iterdir())])
    return reference, pools, len(held_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resamples", type=int, default=200, help="windows per row and role split")
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="draw MTD's roles with each seed: a fit, a reference and a held-out pool each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    params, settings = mtd_params(), MonitorParams()
    rng = np.random.default_rng(args.seed)
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    sizes = []
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as scratch_dir:
        for split_seed in args.split_seeds:
            reference, pools, held_out = condition_pools(params, split_seed, Path(scratch_dir))
            sizes.append(f"seed {split_seed}: {len(reference.normal_scores)} validation normals"
                         f" ({reference.false_alarms} flagged), {held_out} held out")
            for name, pool in pools.items():
                for size in WINDOWS:
                    rows.setdefault((name, size), []).append(
                        rates(pool, size, reference, settings, args.resamples, rng))
    header = (f"MTD at 128 px, roles drawn with split seeds {args.split_seeds} ({'; '.join(sizes)});"
              f" {args.resamples} windows per row and split, resampling seed {args.seed}; warn_p"
              f" {settings.warn_p}, drift_p {settings.drift_p}\n")
    lines = [header, "| condition | window | warn or drift | drift | " + " | ".join(CHECKS) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(CHECKS)]
    for (name, size), per_split in rows.items():
        row = {key: float(np.mean([split[key] for split in per_split]))
               for key in ("alarm", "drift", *CHECKS)}
        note = " (drawn with replacement)" if per_split[0]["with replacement"] else ""
        cells = [f"{row['alarm']:.1%}", f"{row['drift']:.1%}", *(f"{row[check]:.0%}" for check in CHECKS)]
        lines.append(f"| {name}{note} | {size} | " + " | ".join(cells) + " |")
    for key, words in (("alarm", "warn or drift"), ("drift", "drift")):
        lines.append(f"\nunchanged windows judged {words}, per split: " + ", ".join(
            f"{size} images: " + " / ".join(f"{split[key]:.1%}" for split in rows["unchanged", size])
            for size in WINDOWS))
    lines.append(f"\n{time.perf_counter() - started:.0f} s in all")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
