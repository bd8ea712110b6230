"""The Magnetic Tile Defects set as a line's data usually arrives: flat folders, masks optional.

Shared by the real-data tests and the benches. Folders of symbolic links: nothing is
copied until ``padim-mlops data add`` imports them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from anomalib.models import Padim
from anomalib.models.image.padim.torch_model import PadimModel
from torchvision.transforms.v2 import Resize

from flows.thresholds import calibrate
from flows.train import apply_calibration
from padim_plugin import StreamingPadim
from padim_plugin.images import decode_image

MTD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtd"


def mtd_flat_folders(target: Path, masks: bool, mtd: Path = MTD) -> tuple[Path, Path, Path | None]:
    """normal/ (train/good and test/good together), defects/<kind>/ and, if ``masks``, masks/<kind>/."""
    if not mtd.is_dir():
        raise FileNotFoundError(f"Magnetic Tile Defects not found at {mtd}")
    normal, defects, mask_dir = target / "normal", target / "defects", target / "masks"
    for image in sorted((mtd / "train" / "good").iterdir()) + sorted((mtd / "test" / "good").iterdir()):
        _link(image, normal / image.name)
    for kind in sorted(p for p in (mtd / "test").iterdir() if p.is_dir() and p.name != "good"):
        for image in sorted(kind.iterdir()):
            _link(image, defects / kind.name / image.name)
        if masks:
            for mask in sorted((mtd / "ground_truth" / kind.name).iterdir()):
                _link(mask, mask_dir / kind.name / mask.name)
    return normal, defects, mask_dir if masks else None


def _link(source: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(source)


def mtd_paths(split: str, count: int | None = None, mtd: Path = MTD) -> list[Path]:
    """The images of ``train`` or ``test`` in listing order (kinds in turn), or ``count`` of them
    evenly spread over it; an image is a defect when its folder is not ``good``."""
    paths = sorted((mtd / split).rglob("*.*"))
    if not paths:
        raise FileNotFoundError(f"no images under {mtd / split}")
    if count is None or count >= len(paths):
        return paths
    return [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, count).round().astype(int))]


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """float32 (N, 3, size, size) RGB in 0..1, the input of an exported model."""
    resize = Resize((size, size), antialias=True)
    return np.stack([resize(torch.from_numpy(decode_image(p)).permute(2, 0, 1).float() / 255).numpy()
                     for p in paths])


def mtd_images(split: str, count: int, size: int) -> np.ndarray:
    """``count`` images of ``split`` evenly spread over its kinds, resized to ``size`` square."""
    return load_images(mtd_paths(split, count), size)


def fitted_on_mtd(model: StreamingPadim | Padim, n_train: int, n_calibration: int = 20,
                  batch_size: int = 16) -> StreamingPadim | Padim:
    """Fit a lightning PaDiM (ours, or anomalib's with a PadimModel inside) on MTD's first normal
    images, then set its post-processor from the next ones as a normal-only line's validation does."""
    size = model.pre_processor.transform.transforms[0].size[0]
    images = torch.from_numpy(mtd_images("train", n_train + n_calibration, size))
    normalised = model.pre_processor.transform(images)
    train, held_out = normalised[:n_train], normalised[n_train:]
    core = model.model
    with torch.no_grad():
        if isinstance(core, PadimModel):
            core.train()  # anomalib's Padim appends embeddings to its memory bank in training mode
            for batch in train.split(batch_size):
                core(batch)
            core.fit()
        else:
            core.fit(train.split(batch_size))
        core.eval()
        raw = core(held_out)
    maps = raw.anomaly_map.numpy().ravel()
    scores = raw.pred_score.flatten().numpy()
    calibration = calibrate(np.zeros(len(scores), dtype=int), scores, np.zeros(len(maps), dtype=int), maps,
                            (float(maps.min()), float(maps.max())), quantile=0.995)
    apply_calibration(model, calibration)
    return model.eval()
