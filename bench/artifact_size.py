"""Model artifact sizes, ours against anomalib's Padim, and what float16 storage costs in accuracy.

Sizes: for each configuration the fitted state has the shapes a real fit gives (patch positions
from the backbone at that image size, the channel subset) and random values, which change no size
(safetensors and torch.save store raw arrays, uncompressed). Ours is the artifact folder
(safetensors + manifest) in float32 and float16; anomalib's is ``torch.save`` of its PadimModel's
state dict (backbone, mean, full inverse covariances), what its checkpoints and torch export hold.

Accuracy (``--mtd``): one fit on Magnetic Tile Defects (MVTec layout: 762 training images, all
582 test images), saved in float32 and in float16, both loaded back and run on the test images:
the image AUROC of each, and the relative error of the float16 raw anomaly maps against float32.

ONNX (``--onnx CONFIG``): that configuration exported with anomalib's ``to_onnx``, the weights in
external data beside the graph, loaded by ONNX Runtime and run on one image against torch.

    .venv/bin/python bench/artifact_size.py [--mtd] [--configs efficientnet_lite0:100:256 ...]
    .venv/bin/python bench/artifact_size.py --configs resnet18:100:224 --onnx wide_resnet50_2:550:224
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from sklearn.metrics import roc_auc_score

from padim_plugin import StreamingPadim
from padim_plugin.artifact import load_artifact, save_artifact
from padim_plugin.exported import compare_with_torch, export_model, raw_outputs
from padim_plugin.runtime import ExportedModel

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import padim_vs_anomalib as pva  # noqa: E402

CONFIGS = ("efficientnet_lite0:100:256", "resnet18:100:224", "wide_resnet50_2:550:224")
DTYPES = ("float32", "float16")


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def with_fitted_shapes(backbone: str, n_features: int, size: int) -> StreamingPadim:
    """A StreamingPadim with random weights whose fitted state has a real fit's shapes."""
    pre_processor = StreamingPadim.configure_pre_processor((size, size))
    model = StreamingPadim(backbone=backbone, n_features=n_features, weights=None, evaluator=False,
                           visualizer=False, pre_processor=pre_processor)
    core = model.model.eval()
    with torch.no_grad():
        positions = core.embed(torch.zeros(1, 3, size, size)).shape[-2:].numel()
    core.mean = torch.randn(positions, n_features)
    core.whitening = torch.randn(positions, n_features, n_features).triu_()
    return model


def anomalib_bytes(backbone: str, layers: list[str], n_features: int, positions: int, work: Path) -> int:
    """torch.save of anomalib's PadimModel state dict, its Gaussian at the same shapes."""
    reference = PadimModel(backbone=backbone, layers=layers, pre_trained=False, n_features=n_features)
    reference.gaussian.mean = torch.randn(n_features, positions)
    reference.gaussian.inv_covariance = torch.randn(positions, n_features, n_features)
    torch.save(reference.state_dict(), work / "anomalib.pt")
    return (work / "anomalib.pt").stat().st_size


def size_rows(configs: list[str]) -> list[str]:
    rows = ["| backbone / channels @ size | ours float32 MB | ours float16 MB | anomalib Padim MB"
            " | ours32 / anomalib | ours16 / anomalib |", "|---|---:|---:|---:|---:|---:|"]
    for config in configs:
        backbone, n_features, size = config.split(":")
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            model = with_fitted_shapes(backbone, int(n_features), int(size))
            positions, layers = model.model.mean.shape[0], model.model.layers
            ours = {dtype: folder_bytes(save_artifact(model, work / dtype, int(size), dtype=dtype))
                    for dtype in DTYPES}
            del model
            gc.collect()
            theirs = anomalib_bytes(backbone, layers, int(n_features), positions, work)
        mb = {dtype: size_ / 2**20 for dtype, size_ in ours.items()}
        ratio = {dtype: size_ / theirs for dtype, size_ in ours.items()}
        rows.append(f"| {backbone} / {n_features} @ {size} | {mb['float32']:.1f} | {mb['float16']:.1f} |"
                    f" {theirs / 2**20:.1f} | {ratio['float32']:.3f} | {ratio['float16']:.3f} |")
        print(rows[-1], file=sys.stderr, flush=True)
        gc.collect()
    return rows


def float16_rows(data: Path) -> list[str]:
    """Fit once on MTD, store in both dtypes, run the test split through each loaded model."""
    spec = pva.RunSpec(model="ours", backbone="efficientnet_lite0", n_train=762, device="cpu",
                       synthetic=False, data=str(data), max_test=None, batch_size=32,
                       threads=pva.available_cores(), repeats=1)
    dataset = pva.real_dataset(spec)
    core = pva.build_ours(spec)
    with torch.no_grad():
        core.fit(dataset.train)
    model = StreamingPadim(n_features=core.n_features, weights=None, evaluator=False, visualizer=False,
                           pre_processor=StreamingPadim.configure_pre_processor((256, 256)))
    model.model = core  # raw scores are compared: the post-processor's values do not matter here
    outputs = {}
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
        for dtype in DTYPES:
            loaded = load_artifact(save_artifact(model, Path(scratch) / dtype, 256, dtype=dtype)).model
            outputs[dtype] = [loaded(batch) for batch in dataset.test]
    maps = {dtype: torch.cat([o.anomaly_map for o in out]) for dtype, out in outputs.items()}
    auroc = {dtype: roc_auc_score(dataset.labels.numpy(), torch.cat([o.pred_score for o in out]).numpy())
             for dtype, out in outputs.items()}
    error = float((maps["float16"] - maps["float32"]).norm() / maps["float32"].norm())
    return ["| storage | image AUROC on MTD | raw map relative error vs float32 |", "|---|---:|---:|",
            f"| float32 | {auroc['float32']:.4f} | 0 |",
            f"| float16 | {auroc['float16']:.4f} | {error:.2e} |",
            f"\nimage AUROC change float16 - float32: {auroc['float16'] - auroc['float32']:+.5f}"]


def onnx_rows(config: str) -> list[str]:
    """Export one configuration to ONNX (anomalib's exporter), load it in ONNX Runtime, run one image."""
    backbone, n_features, size = config.split(":")
    model = with_fitted_shapes(backbone, int(n_features), int(size))
    image = np.random.default_rng(0).random((1, 3, int(size), int(size)), dtype=np.float32)
    with tempfile.TemporaryDirectory() as scratch, raw_outputs(model):  # the scores themselves, unclamped
        path = export_model(model, "onnx", Path(scratch))
        graph_mb = path.stat().st_size / 2**20
        data_mb = path.with_name(path.name + ".data").stat().st_size / 2**20
        errors = compare_with_torch(model, ExportedModel(path), image)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return ["| ONNX export | model.onnx MB | model.onnx.data MB | ONNX Runtime score rel. error vs torch"
            " | peak RSS GB |", "|---|---:|---:|---:|---:|",
            f"| {backbone} / {n_features} @ {size} | {graph_mb:.2f} | {data_mb:.0f} |"
            f" {errors['pred_score']:.1e} | {peak_gb:.1f} |"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="backbone:channels:size")
    parser.add_argument("--mtd", action="store_true", help="also measure float16 accuracy on MTD")
    parser.add_argument("--data", type=Path, default=pva.DEFAULT_DATA)
    parser.add_argument("--onnx", metavar="CONFIG", help="also export CONFIG to ONNX and run it, e.g."
                        " wide_resnet50_2:550:224 (past protobuf's 2 GiB: external data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(pva.available_cores())
    print("\n".join(size_rows(args.configs)))
    if args.mtd:
        print("\n" + "\n".join(float16_rows(args.data)))
    if args.onnx:
        print("\n" + "\n".join(onnx_rows(args.onnx)))


if __name__ == "__main__":
    main()
