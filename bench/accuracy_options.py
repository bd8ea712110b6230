"""Accuracy options of StreamingPadim on MTD (the "beyond anomalib's accuracy" issue), one fit.

Magnetic Tile Defects in its published split (762 normal training images, 582 test images),
efficientnet_lite0, 100 channels, 256 px. The statistics are streamed once; each pooling of the
Gaussians (per position as in the paper, over a k x k neighbourhood, or shared by all positions)
finalizes them anew and scores the test split (image and pixel AUROC, AUPRO as in
padim_vs_anomalib.py). Then every image-score rule is computed from the paper's test maps with
``padim_plugin.anomaly_map.image_score``, the function the model scores with. Channel projection
and aligned maps are not built yet.

    .venv/bin/python bench/accuracy_options.py [--top-k 0.1 1 5] [--data PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from padim_plugin.anomaly_map import image_score

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import padim_vs_anomalib as pva  # noqa: E402

POOLINGS = (("per_position", 3), ("neighbourhood", 3), ("neighbourhood", 5), ("neighbourhood", 9),
            ("shared", 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top-k", type=float, nargs="+", default=[0.1, 1.0, 5.0], help="percent of pixels")
    parser.add_argument("--data", type=Path, default=pva.DEFAULT_DATA)
    args = parser.parse_args(argv)
    spec = pva.RunSpec(model="ours", backbone="efficientnet_lite0", n_train=762, device="cpu",
                       synthetic=False, data=str(args.data), max_test=None, batch_size=32,
                       threads=pva.available_cores(), repeats=1)
    torch.set_num_threads(spec.threads)
    dataset = pva.real_dataset(spec)
    masks = dataset.load_masks()
    model = pva.build_ours(spec)
    with torch.no_grad():
        model.fit(dataset.train)  # the statistics; each pooling below only finalizes them anew
    print(f"\nMTD: {len(dataset.labels)} test images, fit on {spec.n_train}; efficientnet_lite0/100 @256\n")
    print("| Gaussians | image AUROC | pixel AUROC | pixel AUPRO | finalize s |\n|---|---:|---:|---:|---:|")
    maps = None
    for pooling, window in POOLINGS:
        model.pooling, model.pooling_window = pooling, window
        started = time.perf_counter()
        model.finalize()
        seconds = time.perf_counter() - started
        with torch.no_grad():
            outputs = [model(batch) for batch in dataset.test]
        figures = pva.accuracy(outputs, dataset.labels, masks)
        name = f"{pooling} {window}x{window}" if pooling == "neighbourhood" else pooling
        print(f"| {name} | {figures['image_auroc']:.4f} | {figures['pixel_auroc']:.4f} |"
              f" {figures['pixel_aupro']:.4f} | {seconds:.1f} |")
        if maps is None:  # the paper's model: the score rules below use its maps
            maps = torch.cat([output.anomaly_map for output in outputs])
    labels = dataset.labels.numpy()
    rules = {"maximum (paper)": None} | {f"mean of top {k:g}%": k for k in args.top_k}
    print("\n| image score (per-position Gaussians) | image AUROC | change vs maximum |\n|---|---:|---:|")
    baseline = None
    for name, top_k in rules.items():
        auroc = roc_auc_score(labels, image_score(maps, top_k).flatten().numpy())
        baseline = auroc if baseline is None else baseline
        print(f"| {name} | {auroc:.4f} | {auroc - baseline:+.4f} |")


if __name__ == "__main__":
    main()
