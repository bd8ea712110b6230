"""The Magnetic Tile Defects set as a line's data usually arrives: flat folders, masks optional.

Shared by the real-data tests and the benches. Folders of symbolic links: nothing is
copied until ``padim-mlops data add`` imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the folder helpers need none of these: imported where the models are built
    import torch

    from padim_plugin import StreamingPadim

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
    import torch
    from torchvision.transforms.v2 import Resize

    from padim_plugin.images import decode_image

    resize = Resize((size, size), antialias=True)
    return np.stack([resize(torch.from_numpy(decode_image(p)).permute(2, 0, 1).float() / 255).numpy()
                     for p in paths])


def mtd_images(split: str, count: int, size: int) -> np.ndarray:
    """``count`` images of ``split`` evenly spread over its kinds, resized to ``size`` square."""
    return load_images(mtd_paths(split, count), size)


def mtd_model(size: int = 256, n_features: int = 100) -> StreamingPadim:
    """The configuration the MTD benches and tests share: efficientnet_lite0 (offline weights)."""
    from padim_plugin import StreamingPadim

    pre_processor = StreamingPadim.configure_pre_processor((size, size))
    return StreamingPadim(backbone="efficientnet_lite0", n_features=n_features, evaluator=False,
                          visualizer=False, pre_processor=pre_processor)


def fitted_on_mtd(model: torch.nn.Module, n_train: int, n_calibration: int = 20, batch_size: int = 16,
                  fit: Callable[[Sequence[torch.Tensor]], object] | None = None) -> torch.nn.Module:
    """Fit a lightning PaDiM on ``n_train`` MTD normal images, then set its post-processor from
    ``n_calibration`` others, as a normal-only line's validation does. ``fit`` takes the normalised
    batches (default: ``model.model.fit``, StreamingPadimModel's)."""
    import torch

    from flows.config import ThresholdParams
    from flows.model.fit import apply_calibration
    from flows.model.thresholds import calibrate
    from padim_plugin.scoring import image_size

    images = torch.from_numpy(mtd_images("train", n_train + n_calibration, image_size(model)[0]))
    normalised = model.pre_processor.transform(images)
    train, held_out = normalised[:n_train], normalised[n_train:]
    with torch.no_grad():
        (fit or model.model.fit)(train.split(batch_size))
        raw = model.model.eval()(held_out)
    maps = raw.anomaly_map.numpy().ravel()
    scores = raw.pred_score.flatten().numpy()
    calibration = calibrate(np.zeros(len(scores), dtype=int), scores, np.zeros(len(maps), dtype=int), maps,
                            (float(maps.min()), float(maps.max())), ThresholdParams(rule="f1"))
    apply_calibration(model, calibration)
    return model.eval()
