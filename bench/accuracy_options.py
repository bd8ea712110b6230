"""Accuracy options of StreamingPadim on MTD (the "beyond anomalib's accuracy" issue), one fit.

Magnetic Tile Defects in its published split (762 normal training images, 582 test images),
efficientnet_lite0, 100 channels, 256 px: the paper's model is fitted once, and every image-score
rule is computed from the same test maps with ``padim_plugin.anomaly_map.image_score``, the
function the model scores with. Image AUROC per rule; the maps (hence pixel AUROC) are the same
for every rule. Only the image-score rule is implemented so far; pooled Gaussians, channel
projection and aligned maps will add rows.

    .venv/bin/python bench/accuracy_options.py [--top-k 0.1 1 5] [--data PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from padim_plugin.anomaly_map import image_score

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import padim_vs_anomalib as pva  # noqa: E402


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
    model = pva.build_ours(spec)
    with torch.no_grad():
        model.fit(dataset.train)
        maps = torch.cat([model(batch).anomaly_map for batch in dataset.test])
    labels = dataset.labels.numpy()
    rules = {"maximum (paper)": None} | {f"mean of top {k:g}%": k for k in args.top_k}
    print(f"\nMTD: {len(dataset.labels)} test images, fit on {spec.n_train}; efficientnet_lite0/100 @256\n")
    print("| image score | image AUROC | change vs maximum |\n|---|---:|---:|")
    baseline = None
    for name, top_k in rules.items():
        auroc = roc_auc_score(labels, image_score(maps, top_k).flatten().numpy())
        baseline = auroc if baseline is None else baseline
        print(f"| {name} | {auroc:.4f} | {auroc - baseline:+.4f} |")


if __name__ == "__main__":
    main()
