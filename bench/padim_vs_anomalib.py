"""StreamingPadim (padim_plugin) against anomalib's PadimModel, side by side, on the same inputs.

Both models get the same backbone weights, the same random channel subset and the same
preprocessed tensors; each measurement runs in its own fresh (spawned) process so that memory
peaks do not mix. Per model and training-set size N it measures:

- fit: seconds (and images/s) to go through N training images and produce a fitted model, the final
  Gaussian fit included, image decoding excluded (images are decoded and preprocessed beforehand);
- fit memory: peak RSS during the fit minus RSS just before it (psutil sampled every 10 ms, made
  exact by ``ru_maxrss`` when the fit sets a new high), and what is still held after it; on CUDA,
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- backbone-only time over the same N images, the CNN fed as each model feeds it (ours: channels-last
  tensors; anomalib: plain NCHW), so that "fit / backbone-only" shows each fit's own overhead;
- test inference images/s (model forward only) and backbone-only images/s over the same images;
- image AUROC, pixel AUROC and pixel AUPRO (FPR <= 0.3) on the test split (real data only).

Real data (default): Magnetic Tile Defects in MVTec layout, efficientnet_lite0 with its packaged
ImageNet weights, 100 channels, 256x256, batch 32, CPU::

    .venv/bin/python bench/padim_vs_anomalib.py [--n-train 100 762] [--data PATH] [--max-test M]

Timings use --threads torch threads (default: the cores available) and are taken once after a
warm-up; --repeats R times every loop R times and reports the median (memory: first fit only).

Synthetic (random batches made on the device, random weights, no accuracy; resnet18 and
wide_resnet50_2 at 224, efficientnet_lite0 at 256; N = 1024 and 4096 by default)::

    .venv/bin/python bench/padim_vs_anomalib.py --device cuda --synthetic
    .venv/bin/python bench/padim_vs_anomalib.py --device cpu --synthetic --n-train 64 --backbones resnet18

A markdown table is printed; all raw figures go to JSON (--out, default bench/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anomalib
import numpy as np
import psutil
import torch
from anomalib.data import InferenceBatch
from anomalib.metrics import AUPRO
from anomalib.models.image.padim.torch_model import PadimModel
from torchmetrics.functional.classification import binary_auroc
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from padim_plugin import StreamingPadimModel
from padim_plugin.datamodule import mvtec_samples

MODELS = ("ours", "anomalib")
MODEL_TITLES = {"ours": "StreamingPadim", "anomalib": "anomalib Padim"}
# backbone -> (n_features, image size) as in the PaDiM paper / anomalib defaults
BACKBONES: dict[str, tuple[int, int]] = {
    "resnet18": (100, 224),
    "wide_resnet50_2": (550, 224),
    "efficientnet_lite0": (100, 256),
    "efficientnet_lite1": (100, 256),
    "efficientnet_lite2": (100, 256),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# anomalib's MultiVariateGaussian adds 0.01 * I and then 1e-5 * I to every covariance
ANOMALIB_EPSILON = 0.01 + 1e-5
SEED = 0
MIB = 2**20
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/mtd"
DEFAULT_OUT = Path(__file__).resolve().parent / "results/padim_vs_anomalib.json"


@dataclass(frozen=True)
class RunSpec:
    """One measurement: one model, one backbone, one training-set size, in one fresh process."""

    model: str
    backbone: str
    n_train: int
    device: str
    synthetic: bool
    data: str
    max_test: int | None
    batch_size: int
    threads: int
    repeats: int
    options: dict[str, Any] = field(default_factory=dict)  # StreamingPadimModel's accuracy options

    @property
    def n_features(self) -> int:
        return BACKBONES[self.backbone][0]

    @property
    def image_size(self) -> int:
        return BACKBONES[self.backbone][1]


@dataclass
class Candidate:
    """What the benchmark needs from a model, as callables, so one function measures both."""

    fit: Callable[[Sequence[torch.Tensor]], object]
    reset: Callable[[], None]
    backbone: Callable[[torch.Tensor], object]
    infer: Callable[[torch.Tensor], InferenceBatch]


@dataclass
class Dataset:
    """Preprocessed batches; labels and a loader for the masks only with real data."""

    train: list[torch.Tensor]
    test: list[torch.Tensor]
    labels: torch.Tensor | None = None
    load_masks: Callable[[], torch.Tensor] | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- data


def preprocess(size: int) -> v2.Transform:
    """anomalib's default PreProcessor: resize with antialiasing, ImageNet normalisation."""
    return v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Resize((size, size), antialias=True),
            v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def decode_images(paths: Iterable[str], size: int) -> torch.Tensor:
    """(N, 3, size, size) normalised float images; grey images are expanded to three channels."""
    transform = preprocess(size)
    return torch.stack([transform(decode_image(path, mode=ImageReadMode.RGB)) for path in paths])


def decode_masks(paths: Iterable[str], size: int) -> torch.Tensor:
    """(N, size, size) 0/1 masks resized with nearest; an empty path is an all-normal image."""
    masks = []
    for path in paths:
        if not path:
            masks.append(torch.zeros(size, size, dtype=torch.uint8))
            continue
        mask = decode_image(path, mode=ImageReadMode.GRAY)
        mask = v2.functional.resize(mask, [size, size], interpolation=v2.InterpolationMode.NEAREST)
        masks.append((mask[0] > 0).to(torch.uint8))
    return torch.stack(masks)


def spread(n_items: int, n_wanted: int | None) -> np.ndarray:
    """Indices of ``n_wanted`` items evenly spread over ``n_items`` (all of them by default)."""
    if n_wanted is None or n_wanted >= n_items:
        return np.arange(n_items)
    return np.unique(np.linspace(0, n_items - 1, n_wanted).round().astype(int))


def real_dataset(spec: RunSpec) -> Dataset:
    """A seeded random N of the training images, and an evenly spread subset of the test split."""
    train = mvtec_samples(spec.data, "train")
    if spec.n_train > len(train):
        raise ValueError(f"--n-train {spec.n_train}: {spec.data} has only {len(train)} training images")
    order = np.random.default_rng(SEED).permutation(len(train))[: spec.n_train]
    test = mvtec_samples(spec.data, "test")
    test = test.iloc[spread(len(test), spec.max_test)]
    return Dataset(
        train=list(decode_images(train.image_path.iloc[order], spec.image_size).split(spec.batch_size)),
        test=list(decode_images(test.image_path, spec.image_size).split(spec.batch_size)),
        labels=torch.tensor(test.label_index.to_numpy()),
        load_masks=lambda: decode_masks(test.mask_path, spec.image_size),
    )


def synthetic_dataset(spec: RunSpec, pool_size: int = 4) -> Dataset:
    """N random images made on the device, as a few distinct batches used in turn."""
    device = torch.device(spec.device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    shape = (spec.batch_size, 3, spec.image_size, spec.image_size)
    pool = [torch.randn(shape, generator=generator, device=device) for _ in range(pool_size)]

    def batches(n_images: int) -> list[torch.Tensor]:
        sizes = [min(spec.batch_size, n_images - start) for start in range(0, n_images, spec.batch_size)]
        return [pool[number % pool_size][:size] for number, size in enumerate(sizes)]

    return Dataset(
        train=batches(spec.n_train), test=batches(min(spec.n_train, spec.max_test or spec.n_train))
    )


# --------------------------------------------------------------------------- models


def build_ours(spec: RunSpec) -> StreamingPadimModel:
    """StreamingPadim with anomalib's effective regulariser; random weights in synthetic mode."""
    settings = {"n_features": spec.n_features, "weights": None if spec.synthetic else "imagenet",
                "seed": SEED, "epsilon": ANOMALIB_EPSILON}
    model = StreamingPadimModel(spec.backbone, **(settings | spec.options))
    return model.to(spec.device).eval()


def build_anomalib(ours: StreamingPadimModel) -> PadimModel:
    """anomalib's PadimModel with the same backbone weights and channel subset as ``ours``."""
    reference = PadimModel(ours.backbone, list(ours.layers), pre_trained=False, n_features=ours.n_features)
    reference.feature_extractor.feature_extractor.load_state_dict(ours.feature_extractor.state_dict())
    reference.idx = ours.channel_index.clone()
    return reference.to(ours.channel_index.device).eval()


def ours_candidate(model: StreamingPadimModel) -> Candidate:
    def backbone(images: torch.Tensor) -> object:
        """The CNN as our model feeds it (channels-last), so "fit / backbone-only" is our overhead."""
        return model.feature_extractor(images.contiguous(memory_format=torch.channels_last))

    return Candidate(fit=model.fit, reset=model.reset, backbone=backbone, infer=model)


def anomalib_candidate(model: PadimModel) -> Candidate:
    def fit(batches: Sequence[torch.Tensor]) -> None:
        model.train()  # in training mode anomalib's forward appends embeddings to the memory bank
        for images in batches:
            model(images)
        model.fit()
        model.eval()

    def reset() -> None:
        model.memory_bank = []
        model.gaussian.mean = model.gaussian.mean.new_empty(0)
        model.gaussian.inv_covariance = model.gaussian.inv_covariance.new_empty(0)

    return Candidate(fit=fit, reset=reset, backbone=model.feature_extractor, infer=model)


def build_candidate(spec: RunSpec) -> Candidate:
    ours = build_ours(spec)
    return ours_candidate(ours) if spec.model == "ours" else anomalib_candidate(build_anomalib(ours))


# --------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(action: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``action``, device work included."""
    synchronize(device)
    start = time.perf_counter()
    action()
    synchronize(device)
    return time.perf_counter() - start


def run_batches(
    function: Callable[[torch.Tensor], Any], batches: Iterable[torch.Tensor], sink: list | None = None
) -> None:
    """Apply ``function`` to every batch without autograd, keeping the outputs only if asked."""
    with torch.no_grad():
        for images in batches:
            output = function(images)
            if sink is not None:
                sink.append(output)


class MemoryProbe:
    """Memory before, at the peak of, and after a ``with`` block."""

    kind = ""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = self.peak = self.after = 0

    def report(self) -> dict[str, Any]:
        return {
            "memory_kind": self.kind,
            "memory_before_bytes": self.before,
            "memory_peak_bytes": self.peak,
            "memory_after_bytes": self.after,
            "fit_memory_growth_bytes": self.peak - self.before,
            "fit_memory_retained_bytes": self.after - self.before,
        }


class RssProbe(MemoryProbe):
    """Peak resident set size: a sampler thread every ``interval`` s, and ``ru_maxrss`` when exact.

    ``ru_maxrss`` is the process's all-time high, so it is the peak of the block exactly when the
    block raised it; otherwise the sampled peak is used.
    """

    kind = "rss"

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        super().__init__(device)
        self.interval = interval
        self.process = psutil.Process()
        self.peak_source = "sampler"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _max_rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux

    def _rss(self) -> int:
        return self.process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssProbe:
        gc.collect()
        self._max_rss_before = self._max_rss()
        self.before = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self._rss()
        max_rss = self._max_rss()
        self.peak = max(self.peak, self.after)
        if max_rss > self._max_rss_before and max_rss >= self.peak:
            self.peak, self.peak_source = max_rss, "ru_maxrss"

    def report(self) -> dict[str, Any]:
        return super().report() | {"memory_peak_source": self.peak_source}


class CudaProbe(MemoryProbe):
    """``torch.cuda`` allocator figures: max_memory_allocated after reset_peak_memory_stats."""

    kind = "cuda"

    def __enter__(self) -> CudaProbe:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.before = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc_info: object) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)
        self.after = torch.cuda.memory_allocated(self.device)


def memory_probe(device: torch.device) -> MemoryProbe:
    return CudaProbe(device) if device.type == "cuda" else RssProbe(device)


def measure(
    candidate: Candidate, data: Dataset, device: torch.device, repeats: int = 1
) -> tuple[dict[str, Any], list[InferenceBatch]]:
    """Time and memory of the fit, the backbone and inference; returns figures and test outputs.

    Each timing is taken ``repeats`` times (median reported, all kept); memory and the outputs
    come from the first fit and the first inference pass.
    """
    n_train = sum(len(images) for images in data.train)
    n_test = sum(len(images) for images in data.test)

    def fit() -> object:
        return candidate.fit(data.train)

    candidate.fit(data.train[:1])  # warm-up: one small fit runs every code path once
    candidate.reset()
    with memory_probe(device) as memory:
        fit_runs = [timed(fit, device)]
    outputs: list[InferenceBatch] = []
    run_batches(candidate.infer, data.test[:1])  # warm-up
    # Each ratio pairs measurements taken side by side, so that a slow spell of a shared machine
    # hits both: the fit with a backbone pass right after it, and the forward with the backbone
    # alternating batch by batch.
    runs: dict[str, list[float]] = {"fit": [], "train_backbone": [], "forward": [], "test_backbone": []}
    for repeat in range(repeats):
        runs["fit"].append(fit_runs[0] if repeat == 0 else timed(fit, device))
        runs["train_backbone"].append(timed(lambda: run_batches(candidate.backbone, data.train), device))
        forward = backbone = 0.0
        for images in data.test:
            backbone += timed(lambda images=images: run_batches(candidate.backbone, [images]), device)
            sink = outputs if repeat == 0 else None
            forward += timed(lambda images=images, sink=sink: run_batches(candidate.infer, [images], sink),
                             device)
        runs["forward"].append(forward)
        runs["test_backbone"].append(backbone)
    seconds = {name: statistics.median(values) for name, values in runs.items()}

    def paired(numerator: str, denominator: str) -> float:
        return statistics.median(a / b for a, b in zip(runs[numerator], runs[denominator], strict=True))

    figures = {
        "n_test": n_test,
        **{f"{name}_s": value for name, value in seconds.items()},
        **{f"{name}_s_runs": values for name, values in runs.items()},
        "fit_images_per_s": n_train / seconds["fit"],
        "fit_over_backbone": paired("fit", "train_backbone"),
        "forward_images_per_s": n_test / seconds["forward"],
        "backbone_images_per_s": n_test / seconds["test_backbone"],
        "forward_over_backbone": paired("forward", "test_backbone"),
    }
    return figures | memory.report(), outputs


def min_max(values: torch.Tensor) -> torch.Tensor:
    """Rescale to [0, 1] (float64): torchmetrics' AUROC would squash scores outside it by a sigmoid."""
    values = values.double()
    return (values - values.min()) / (values.max() - values.min()).clamp_min(torch.finfo(values.dtype).tiny)


def accuracy(outputs: list[InferenceBatch], labels: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Image AUROC, pixel AUROC and pixel AUPRO (anomalib's, FPR limit 0.3)."""
    scores = torch.cat([output.pred_score.flatten() for output in outputs]).float().cpu()
    maps = torch.cat([output.anomaly_map for output in outputs]).squeeze(1).float().cpu()
    aupro = AUPRO(fields=("anomaly_map", "gt_mask"), fpr_limit=0.3)
    aupro.update(SimpleNamespace(anomaly_map=maps, gt_mask=masks))
    return {
        "image_auroc": binary_auroc(min_max(scores), labels, validate_args=False).item(),
        "pixel_auroc": binary_auroc(min_max(maps.flatten()), masks.flatten(), validate_args=False).item(),
        "pixel_aupro": aupro.compute().item(),
    }


def run_worker(spec: RunSpec) -> dict[str, Any]:
    """Everything for one RunSpec; meant to run in a fresh process."""
    torch.set_num_threads(spec.threads)
    torch.manual_seed(SEED)
    device = torch.device(spec.device)
    data = synthetic_dataset(spec) if spec.synthetic else real_dataset(spec)
    candidate = build_candidate(spec)
    figures, outputs = measure(candidate, data, device, spec.repeats)
    if data.labels is not None and data.load_masks is not None:
        figures |= accuracy(outputs, data.labels, data.load_masks())
    if device.type == "cuda":
        figures["device_name"] = torch.cuda.get_device_name(device)
    return figures


def run_isolated(spec: RunSpec) -> dict[str, Any]:
    """``run_worker`` in a freshly spawned process; a failure is recorded, not raised."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(run_worker, spec).result()
        except Exception as error:  # e.g. out of memory: keep the other runs
            return {"error": f"{type(error).__name__}: {error}"[:500]}


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class Metric:
    """A table row kind: the figure's key, its label, and how to show it."""

    key: str
    label: str
    scale: float = 1.0
    digits: int = 2


TIMING_METRICS = (
    Metric("fit_s", "fit s"),
    Metric("fit_images_per_s", "fit img/s", digits=1),
    Metric("train_backbone_s", "backbone-only s (training images)"),
    Metric("forward_images_per_s", "test forward img/s", digits=1),
    Metric("backbone_images_per_s", "test backbone-only img/s", digits=1),
)
MEMORY_METRICS = {
    "rss": (
        Metric("fit_memory_growth_bytes", "fit RSS growth MiB (peak - before)", 1 / MIB, 0),
        Metric("fit_memory_retained_bytes", "RSS retained after fit MiB", 1 / MIB, 0),
    ),
    "cuda": (
        Metric("memory_peak_bytes", "fit peak device memory MiB", 1 / MIB, 0),
        Metric("fit_memory_growth_bytes", "fit device memory growth MiB (peak - before)", 1 / MIB, 0),
    ),
}
ACCURACY_METRICS = (
    Metric("image_auroc", "image AUROC", digits=4),
    Metric("pixel_auroc", "pixel AUROC", digits=4),
    Metric("pixel_aupro", "pixel AUPRO (FPR <= 0.3)", digits=4),
)
RATIO_METRICS = (
    Metric("fit_over_backbone", "fit / backbone-only"),
    Metric("forward_over_backbone", "forward / backbone-only"),
)


def table_metrics(device: str, synthetic: bool) -> tuple[Metric, ...]:
    memory = MEMORY_METRICS["cuda" if torch.device(device).type == "cuda" else "rss"]
    return TIMING_METRICS + memory + (() if synthetic else ACCURACY_METRICS) + RATIO_METRICS


def show(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One row per (backbone, metric, N): ours, anomalib, and their ratio."""
    by_key = {(run["backbone"], run["model"], run["n_train"]): run for run in runs}
    header = f"| metric | N | {MODEL_TITLES['ours']} | {MODEL_TITLES['anomalib']} | ratio (ours/anomalib) |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for backbone in args.backbones:
        prefix = f"{backbone}: " if len(args.backbones) > 1 or args.synthetic else ""
        for metric in table_metrics(args.device, args.synthetic):
            for n_train in args.n_train:
                pair = [by_key[(backbone, model, n_train)] for model in MODELS]
                values = [run.get(metric.key) for run in pair]
                values = [None if value is None else value * metric.scale for value in values]
                cells = [
                    "error" if "error" in run else show(value, metric.digits)
                    for run, value in zip(pair, values, strict=True)
                ]
                ratio = values[0] / values[1] if None not in values and values[1] else None
                lines.append(
                    f"| {prefix}{metric.label} | {n_train} | {cells[0]} | {cells[1]} | {show(ratio, 3)} |"
                )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
    }


# --------------------------------------------------------------------------- command line


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n-train", type=int, nargs="+", help="training-set sizes (default 100 762; synthetic: 1024 4096)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MVTec-layout folder")
    parser.add_argument("--max-test", type=int, help="use this many test images, spread evenly (default all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--synthetic", action="store_true", help="random batches on the device, no accuracy")
    parser.add_argument(
        "--backbones",
        nargs="+",
        choices=sorted(BACKBONES),
        help="default efficientnet_lite0; synthetic: resnet18 wide_resnet50_2 efficientnet_lite0",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch threads per process")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each loop this many times, report the median (default 1)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for the raw figures")
    args = parser.parse_args(argv)
    if args.n_train is None:
        args.n_train = [1024, 4096] if args.synthetic else [100, 762]
    if args.backbones is None:
        args.backbones = (
            ["resnet18", "wide_resnet50_2", "efficientnet_lite0"]
            if args.synthetic
            else ["efficientnet_lite0"]
        )
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if min(args.n_train) < 2 or args.batch_size < 2:
        parser.error("--n-train and --batch-size must be at least 2 (a covariance needs two images)")
    if not args.synthetic and not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder (MVTec layout expected)")
    if torch.device(args.device).type == "cuda" and not args.synthetic:
        parser.error("--device cuda needs --synthetic (the real-data benchmark is a CPU benchmark)")
    return args


def plan(args: argparse.Namespace) -> list[RunSpec]:
    return [
        RunSpec(
            model=model,
            backbone=backbone,
            n_train=n_train,
            device=args.device,
            synthetic=args.synthetic,
            data=str(args.data),
            max_test=args.max_test,
            batch_size=args.batch_size,
            threads=args.threads,
            repeats=args.repeats,
        )
        for backbone in args.backbones
        for n_train in args.n_train
        for model in MODELS
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")  # quiet workers: timm/anomalib imports
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs = []
    for spec in plan(args):
        print(
            f"{MODEL_TITLES[spec.model]} {spec.backbone} N={spec.n_train} ...",
            end=" ",
            file=sys.stderr,
            flush=True,
        )
        run_started = time.perf_counter()
        figures = run_isolated(spec)
        print(figures.get("error", f"{time.perf_counter() - run_started:.0f} s"), file=sys.stderr, flush=True)
        runs.append(asdict(spec) | figures)
    table = markdown_table(runs, args)
    print(table)
    total_s = time.perf_counter() - started
    print(f"\ntotal {total_s:.0f} s; raw figures in {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    report = {
        "config": config,
        "environment": environment(),
        "total_s": total_s,
        "runs": runs,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
