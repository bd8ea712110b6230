"""Bring incoming image folders into MVTec AD layout, in a staging folder, touching nothing else.

Two sources are accepted: a folder already in MVTec layout, or separate folders of normal images,
defect images (flat, or one sub-folder per defect kind) and masks. Normal images of the latter are
split into train and test by a seeded fraction, so an import is reproducible.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from padim_plugin.mvtec import NORMAL, is_image, mask_candidates

from .validation import DataValidationError

DEFAULT_DEFECT_KIND = "defect"


def stage_mvtec_folder(source: Path, staging: Path) -> dict[str, str]:
    """Copy the train/, test/ and ground_truth/ trees of an MVTec-layout folder (not its README or
    licence); returns {staged path: source path} for error messages."""
    if not source.is_dir():
        raise FileNotFoundError(f"data folder {source} does not exist")
    for part in ("train", "test", "ground_truth"):
        if (source / part).is_dir():
            shutil.copytree(source / part, staging / part)
    staging.mkdir(parents=True, exist_ok=True)
    return {str(staging): str(source)}


def stage_separate_folders(
    normal: Path, defects: Path | None, masks: Path | None, staging: Path, train_fraction: float, seed: int
) -> dict[str, str]:
    """Split normal images by ``train_fraction`` (seeded) and pair each defect image with its mask.

    Returns {staged path: source path} for error messages.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train fraction must be between 0 and 1, got {train_fraction}")
    normals = _images(normal)
    if not normals:
        raise DataValidationError(str(normal), [f"{normal}: no normal images found"])
    order = np.random.default_rng(seed).permutation(len(normals))
    n_train = max(1, round(train_fraction * len(normals)))
    sources: dict[str, str] = {}
    for rank, index in enumerate(order):
        split = "train" if rank < n_train else "test"
        sources[_copy(normals[index], staging / split / NORMAL)] = str(normals[index])
    if defects is None:
        return sources
    problems = []
    for kind, images in _defects_by_kind(defects).items():
        for image in images:
            mask = _find_source_mask(masks, kind, image.stem) if masks else None
            if mask is None:
                problems.append(f"{image}: no mask named {image.stem}_mask.* or {image.stem}.* in {masks}")
                continue
            sources[_copy(image, staging / "test" / kind)] = str(image)
            mask_name = f"{image.stem}_mask{mask.suffix}"
            sources[_copy(mask, staging / "ground_truth" / kind, mask_name)] = str(mask)
    if problems:
        raise DataValidationError(str(defects), problems)
    return sources


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if is_image(p))


def _defects_by_kind(defects: Path) -> dict[str, list[Path]]:
    kinds = {d.name: _images(d) for d in sorted(defects.iterdir()) if d.is_dir()} if defects.is_dir() else {}
    flat = _images(defects)
    if flat:
        kinds[DEFAULT_DEFECT_KIND] = kinds.get(DEFAULT_DEFECT_KIND, []) + flat
    return kinds


def _find_source_mask(masks: Path, kind: str, stem: str) -> Path | None:
    """A mask in ``masks/<kind>/`` or directly in ``masks/``."""
    candidates = mask_candidates(masks / kind, stem) + mask_candidates(masks, stem)
    return candidates[0] if candidates else None


def _copy(file: Path, folder: Path, name: str | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or file.name)
    shutil.copy2(file, target)
    return str(target)
