"""Small synthetic data sets made on the fly: textured normal images and bright square defects with
exact masks, in MVTec layout or as a line's data arrives (separate folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class Synthetic:
    """Textured normal images; defects are bright squares with exact masks."""

    def __init__(self, size: int = 64, seed: int = 0) -> None:
        self.size, self.rng = size, np.random.default_rng(seed)
        self.base = self.rng.normal(128, 20, (size, size, 3))

    def normal(self) -> np.ndarray:
        return np.clip(self.base + self.rng.normal(0, 8, self.base.shape), 0, 255).astype(np.uint8)

    def defect(self) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.normal(), np.zeros((self.size, self.size), np.uint8)
        top, left = self.rng.integers(8, self.size - 24, 2)
        image[top : top + 14, left : left + 14] = 250
        mask[top : top + 14, left : left + 14] = 255
        return image, mask


def write_mvtec_folder(root: Path, n_train: int, n_test_good: int, n_defect: int, size: int = 64,
                       seed: int = 0, n_validation: int = 0) -> Path:
    """An MVTec-layout folder of :class:`Synthetic` images. ``n_validation`` normal and as many
    defect images go to ``validation/``. File names are unique in the line: ``n<i>`` train,
    ``v<i>`` validation, ``t<i>`` test."""
    synthetic = Synthetic(size, seed)
    prefix = {"train": "n", "validation": "v", "test": "t"}
    for split, count in (("train", n_train), ("validation", n_validation), ("test", n_test_good)):
        for i in range(count):
            save(synthetic.normal(), root / split / "good" / f"{prefix[split]}{i:03d}.png")
    for split, count in (("validation", n_validation), ("test", n_defect)):
        for i in range(count):
            image, mask = synthetic.defect()
            save(image, root / split / "spot" / f"{prefix[split]}{i:03d}.png")
            save(mask, root / "ground_truth" / "spot" / f"{prefix[split]}{i:03d}_mask.png")
    return root


def write_flat_folders(root: Path, n_normal: int, n_defect: int, masks: bool = True, size: int = 64,
                       seed: int = 0) -> tuple[Path, Path, Path | None]:
    """Folders as a line's data usually arrives: normal/, defects/ and (if ``masks``) masks/."""
    synthetic = Synthetic(size, seed)
    for i in range(n_normal):
        save(synthetic.normal(), root / "normal" / f"n{i:03d}.png")
    for i in range(n_defect):
        image, mask = synthetic.defect()
        save(image, root / "defects" / f"d{i:03d}.png")
        if masks:
            save(mask, root / "masks" / f"d{i:03d}_mask.png")
    return root / "normal", root / "defects", (root / "masks" if masks else None)


def save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
