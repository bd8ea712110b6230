"""Images/s on the CPU: torch, ONNX Runtime and OpenVINO, for our model and anomalib's Padim.

Both models are fitted on the same MTD normal images (efficientnet_lite0, 100 channels, 256 px;
anomalib's ``PadimModel`` gets our backbone weights and channel subset), calibrated the same way,
and exported the same way (``padim_plugin.exported.export_model``: anomalib's ``to_onnx``, then
OpenVINO IR converted from it) at a fixed 256x256 input.
Every runtime gets the same batches of real test images and the same thread count (OpenVINO in
float32, as ``padim_plugin.exported.ExportedModel`` asks). The torch rows are timed before any
ONNX Runtime or OpenVINO session exists, whose idle threads would otherwise compete for the cores.
Rows:

- full pipeline (resize, normalise, backbone, Mahalanobis map, blur, post-processor) per runtime;
- torch backbone only, same batches and threads, channels-last input as ours feeds it (its
  fastest): the ceiling any PaDiM can reach; and once more with plain (NCHW) input, as anomalib's
  Padim feeds it;
- ``score_arrays`` on uint8 images, what ``padim-mlops predict`` and the pyfunc run per batch;
- the relative error of each export's raw maps and scores (exported again without the
  post-processor, whose clamp to 0..1 would hide differences) against its own torch model.

    .venv/bin/python bench/runtimes.py [--threads 2] [--batch-size 8] [--batches 4] [--repeats 5]

Each runner is warmed up once, then all take turns for ``--repeats`` timed passes over the same
batches; medians. A markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from anomalib.models import Padim

from padim_plugin.exported import export_model, raw_errors
from padim_plugin.runtime import ExportedModel
from padim_plugin.scoring import score_arrays

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import padim_vs_anomalib as pva  # noqa: E402

from tests.mtd import MTD, fitted_on_mtd, mtd_images, mtd_model  # noqa: E402

SIZE, BACKBONE, N_FEATURES = 256, "efficientnet_lite0", 100


def build_models(n_train: int) -> dict[str, torch.nn.Module]:
    """Ours and anomalib's Padim (lightning modules), fitted and calibrated alike."""
    ours = mtd_model(SIZE, N_FEATURES)
    reference = Padim(backbone=BACKBONE, layers=list(ours.model.layers), pre_trained=False,
                      n_features=N_FEATURES, pre_processor=Padim.configure_pre_processor((SIZE, SIZE)),
                      evaluator=False, visualizer=False)
    reference.model = pva.build_anomalib(ours.model)  # our ImageNet weights and channel subset
    fit_reference = pva.anomalib_candidate(reference.model).fit
    return {"ours": fitted_on_mtd(ours, n_train),
            "anomalib Padim": fitted_on_mtd(reference, n_train, fit=fit_reference)}


def images_per_second(runners: dict[str, tuple[Callable, list]], repeats: int) -> dict[str, float]:
    """Images/s of each runner on its batches. The runners take turns within every repeat, so a
    slow spell of a shared machine hits them alike; the median pass counts."""
    for run, batches in runners.values():
        run(batches[0])  # warm-up: allocations, OpenVINO's first inference
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run, batches) in runners.items():
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            times[name].append(time.perf_counter() - started)
    return {name: sum(len(b) for b in runners[name][1]) / statistics.median(seconds)
            for name, seconds in times.items()}


def torch_runner(model: Callable[[torch.Tensor], object]) -> Callable[[np.ndarray | torch.Tensor], object]:
    def run(batch: np.ndarray | torch.Tensor) -> object:
        with torch.no_grad():
            return model(torch.as_tensor(batch))
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=100)
    args = parser.parse_args(argv)
    if not MTD.is_dir():
        raise SystemExit(f"Magnetic Tile Defects not found at {MTD}")
    torch.set_num_threads(args.threads)
    models = build_models(args.n_train)
    test = mtd_images("test", args.batch_size * args.batches, SIZE)
    batches = list(np.split(test, args.batches))
    pixels = [(b.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8) for b in batches]

    # torch first, before any ONNX Runtime or OpenVINO thread pool exists to compete for the cores
    ours = models["ours"]
    normalised = [ours.pre_processor.transform(torch.from_numpy(batch)).contiguous(
        memory_format=torch.channels_last) for batch in batches]  # as ours feeds it: its fastest
    plain = [batch.contiguous() for batch in normalised]
    runners: dict[str, tuple[Callable, list]] = {
        "backbone only": (torch_runner(ours.model.feature_extractor), normalised),
        "backbone only, plain": (torch_runner(ours.model.feature_extractor), plain),
        "score_arrays": (lambda batch: score_arrays(ours, batch), pixels),
    } | {f"{name}|torch": (torch_runner(model), batches) for name, model in models.items()}
    found = images_per_second(runners, args.repeats)
    runners, errors = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, model in models.items():
            for export_format, runtime in (("onnx", "ONNX Runtime"), ("openvino", "OpenVINO")):
                folder = Path(scratch) / f"{name.replace(' ', '_')}_{export_format}"
                probe = test[: args.batch_size]
                errors[name, runtime] = raw_errors(model, export_format, folder / "raw", probe)
                exported = ExportedModel(export_model(model, export_format, folder / "export"), args.threads)
                runners[f"{name}|{runtime}"] = (exported, batches)
        found |= images_per_second(runners, args.repeats)
    rates = {tuple(name.split("|")): rate for name, rate in found.items() if "|" in name}
    backbone, predict = found["backbone only"], found["score_arrays"]

    print(f"\n{args.batches} batches of {args.batch_size} MTD test images, {SIZE}x{SIZE}, {BACKBONE}/"
          f"{N_FEATURES}, {args.threads} threads, median of {args.repeats}\n")
    print("| runtime | ours img/s | anomalib Padim img/s | ours / anomalib | ours max rel. error"
          " (score, map) | anomalib max rel. error |\n|---|---:|---:|---:|---|---|")
    for runtime in ("torch", "ONNX Runtime", "OpenVINO"):
        a, b = rates["ours", runtime], rates["anomalib Padim", runtime]
        shown = [", ".join(f"{e[k]:.1e}" for k in ("pred_score", "anomaly_map")) if e else "reference"
                 for e in (errors.get(("ours", runtime)), errors.get(("anomalib Padim", runtime)))]
        print(f"| {runtime} | {a:.1f} | {b:.1f} | {a / b:.2f} | {shown[0]} | {shown[1]} |")
    print("\n| ours, torch | img/s | / backbone only |\n|---|---:|---:|")
    print(f"| backbone only | {backbone:.1f} | 1.00 |")
    print(f"| backbone only, plain (NCHW) input | {found['backbone only, plain']:.1f} |"
          f" {found['backbone only, plain'] / backbone:.2f} |")
    print(f"| full pipeline | {rates['ours', 'torch']:.1f} | {rates['ours', 'torch'] / backbone:.2f} |")
    print(f"| score_arrays (uint8 in, maps at input size) | {predict:.1f} | {predict / backbone:.2f} |")


if __name__ == "__main__":
    main()
