"""INT8 backbone through NNCF: what it costs in image AUROC on MTD, and what it buys in images/s.

One fit of ours on MTD's 762 normal training images (efficientnet_lite0, 100 channels, 256 px; 20
of them held out to set the post-processor), exported to OpenVINO IR (float32). NNCF's
post-training quantization then makes the convolutions INT8, calibrated on ``--calibration``
training images; MatMuls stay float32, which keeps the Mahalanobis distance and the map's
upsampling and blur exact (``IgnoredScope(types=["MatMul"])``). Both IRs score MTD's 582 test images
on ``--threads`` CPU threads in float32 precision, exported without the post-processor so that the
AUROC comes from raw scores (its clamp to 0..1 would tie them):

    .venv/bin/python bench/int8.py [--calibration 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino
from sklearn.metrics import roc_auc_score

from padim_plugin.exported import export_model, raw_outputs
from padim_plugin.runtime import ExportedModel

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from runtimes import images_per_second  # noqa: E402

from tests.mtd import MTD, fitted_on_mtd, load_images, mtd_model, mtd_paths  # noqa: E402

SIZE, N_TRAIN, N_HELD_OUT, BATCH = 256, 742, 20, 8


def quantize(xml: Path, calibration: np.ndarray, target: Path) -> Path:
    """The IR with INT8 convolutions; float32 MatMuls."""
    import nncf

    model = openvino.Core().read_model(str(xml))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration),
                              ignored_scope=nncf.IgnoredScope(types=["MatMul"]))
    openvino.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def scores(model: ExportedModel, images: np.ndarray) -> np.ndarray:
    return np.concatenate([model(images[i : i + BATCH])["pred_score"].ravel()
                           for i in range(0, len(images), BATCH)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=int, default=300, help="training images for NNCF")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not MTD.is_dir():
        raise SystemExit(f"Magnetic Tile Defects not found at {MTD}")
    model = fitted_on_mtd(mtd_model(SIZE), n_train=N_TRAIN, n_calibration=N_HELD_OUT)
    test_paths = mtd_paths("test")
    labels = np.array([path.parent.name != "good" for path in test_paths], dtype=int)
    test = load_images(test_paths, SIZE)
    calibration = load_images(mtd_paths("train", args.calibration), SIZE)
    with tempfile.TemporaryDirectory() as scratch:
        with raw_outputs(model):  # raw scores: the post-processor's clamp would tie them
            xml = export_model(model, "openvino", Path(scratch))
        int8 = quantize(xml, calibration, Path(scratch) / "int8.xml")
        models = {name: ExportedModel(path, threads=args.threads) for name, path in
                  (("float32", xml), ("INT8 backbone", int8))}
        found = {name: scores(exported, test) for name, exported in models.items()}
        batches = list(np.split(test[:32], 4))
        rates = images_per_second({name: (exported, batches) for name, exported in models.items()}, 5)
        sizes = {"float32": xml.with_suffix(".bin").stat().st_size,
                 "INT8 backbone": int8.with_suffix(".bin").stat().st_size}
    auroc = {name: roc_auc_score(labels, value) for name, value in found.items()}
    print(f"\nMTD, {len(labels)} test images, OpenVINO on {args.threads} threads, batch {BATCH};"
          f" INT8 calibrated on {args.calibration} training images\n")
    print("| OpenVINO IR | image AUROC | img/s | model.bin MB |\n|---|---:|---:|---:|")
    for name in models:
        print(f"| {name} | {auroc[name]:.4f} | {rates[name]:.1f} | {sizes[name] / 2**20:.1f} |")
    change = auroc["INT8 backbone"] - auroc["float32"]
    print(f"\nimage AUROC change INT8 - float32: {change:+.4f}; speed-up"
          f" {rates['INT8 backbone'] / rates['float32']:.2f}x")


if __name__ == "__main__":
    main()
