"""Checks a product line's data folder before anything is versioned or fitted on it.

Every problem is collected, each naming its file, and reported at once: a team fixing a data drop
should see the whole list, not one error per attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from padim_plugin.images import ImageDecodeError, decode_image
from padim_plugin.mvtec import IMAGE_EXTENSIONS, NORMAL, PROVENANCE, ROLE_SPLITS, is_image, mask_candidates

LINE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# Masks are black (0) with white (255) defects. Resized or antialiased masks carry grey edge pixels
# (MTD's up to ~2%); a mask with more grey than this is a soft map or a photo, not a mask.
MAX_GREY_FRACTION = 0.05


class DataValidationError(ValueError):
    """The data of a product line is unusable; ``problems`` lists every reason with its file."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{where}: {len(problems)} problem(s):\n{listing}")

    def renamed(self, sources: dict[str, str]) -> DataValidationError:
        """The same problems, naming each staged copy by the file it was copied from."""

        def rename(text: str) -> str:
            for staged, source in sorted(sources.items(), key=lambda item: -len(item[0])):
                text = text.replace(staged, source)
            return text

        return DataValidationError(rename(self.where), [rename(p) for p in self.problems])


def check_line_name(name: str) -> str:
    """Product line names become folder, DVC and registry names: letters, digits, '_', '-'."""
    if not LINE_NAME.fullmatch(name):
        msg = (
            f"invalid product line name {name!r}: use a letter followed by letters, digits, '_' or"
            " '-' (at most 64), no path separators or '..'"
        )
        raise ValueError(msg)
    return name


def validate_line(root: Path, min_train_images: int = 1, min_validation_images: int = 0) -> None:
    """Raise DataValidationError listing every problem of an MVTec-layout folder.

    Masks are optional; every mask that exists is checked (one per image, same size, binary, no
    orphans). ``min_validation_images`` normal validation images are needed to set a threshold.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(str(root), [f"{root}: folder does not exist"])
    problems: list[str] = []
    problems += stray_entries(root)
    train_images = _images(root / "train" / NORMAL)
    if len(train_images) < min_train_images:
        problems.append(f"{root / 'train' / NORMAL}: {len(train_images)} normal training images,"
                        f" at least {min_train_images} needed")
    validation_normals = _images(root / "validation" / NORMAL)
    if len(validation_normals) < min_validation_images:
        problems.append(f"{root / 'validation' / NORMAL}: {len(validation_normals)} normal validation"
                        f" images, at least {min_validation_images} needed for a threshold")
    test = root / "test"
    if not any(_images(folder) for folder in subdirs(test)):
        problems.append(f"{test}: no test images (metrics and gates need test/good and/or test/<kind>)")
    sizes = {}
    labelled = [i for role in ("validation", "test") for d in subdirs(root / role) for i in _images(d)]
    for image in train_images + labelled:
        try:
            height, width = decode_image(image).shape[:2]
            sizes[image] = (width, height)
        except ImageDecodeError as error:
            problems.append(str(error))
    for role in ("validation", "test"):
        for defect_dir in (d for d in subdirs(root / role) if d.name != NORMAL):
            for image in _images(defect_dir):
                problems += _mask_problems(root, defect_dir.name, image, sizes.get(image))
    problems += orphan_masks(root)
    if problems:
        raise DataValidationError(str(root), problems)


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p)) if folder.is_dir() else []


def stray_entries(root: Path, top_level: bool = True) -> list[str]:
    """Anything that is not a role folder, ground_truth/ or an image in a label folder
    (``top_level`` False: other entries beside those folders, a README say, are let be)."""
    problems = []
    allowed_top = {*ROLE_SPLITS, "ground_truth"}
    for entry in sorted(root.iterdir()) if top_level else []:
        if entry.name not in allowed_top and not (entry.name == PROVENANCE and entry.is_file()):
            problems.append(f"{entry}: stray entry (expected only train/, validation/, test/,"
                            f" ground_truth/ and {PROVENANCE})")
    if (root / "train").is_dir():
        for entry in sorted((root / "train").iterdir()):
            if entry.name != NORMAL:
                problems.append(f"{entry}: stray entry (train/ holds only good/)")
    if (root / "ground_truth" / NORMAL).exists():
        problems.append(f"{root / 'ground_truth' / NORMAL}: normal images have no masks")
    for split in (*ROLE_SPLITS, "ground_truth"):
        for label_dir in subdirs(root / split):
            for entry in sorted(label_dir.iterdir()):
                if not is_image(entry):
                    kind = "folder" if entry.is_dir() else "file"
                    problems.append(
                        f"{entry}: stray {kind} (only images {', '.join(IMAGE_EXTENSIONS)} belong here)"
                    )
        for entry in sorted((root / split).iterdir()) if (root / split).is_dir() else []:
            if entry.is_file():
                problems.append(f"{entry}: stray file (images go in {split}/<label>/)")
    return problems


def _mask_problems(root: Path, defect: str, image: Path, size: tuple[int, int] | None) -> list[str]:
    candidates = mask_candidates(root / "ground_truth" / defect, image.stem)
    if not candidates:
        return []  # labelled per image only: masks are optional
    if len(candidates) > 1:
        return [f"{image}: {len(candidates)} masks ({', '.join(c.name for c in candidates)}), expected one"]
    mask = candidates[0]
    try:
        with Image.open(mask) as opened:
            pixels = np.asarray(opened.convert("L"))
            mask_size = opened.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return [f"{mask}: does not decode as an image ({error})"]
    problems = []
    if size and mask_size != size:
        problems.append(f"{mask}: size {mask_size} differs from its image's {size}")
    grey = float(((pixels > 16) & (pixels < 239)).mean())
    if grey > MAX_GREY_FRACTION:
        problems.append(
            f"{mask}: not binary ({grey:.0%} grey pixels); masks are 0 background, 255 defect"
        )
    return problems


def orphan_masks(root: Path) -> list[str]:
    problems = []
    for mask_dir in subdirs(root / "ground_truth"):
        kind = mask_dir.name
        stems = {p.stem for role in ("validation", "test") for p in _images(root / role / kind)}
        for mask in _images(mask_dir):
            if mask.stem.removesuffix("_mask") not in stems and mask.stem not in stems:
                problems.append(f"{mask}: mask without an image in validation/{kind} or test/{kind}")
    return problems


def describe(root: Path) -> dict[str, int]:
    """Image counts per role/label, for printing what was added."""
    counts = {}
    for split in ROLE_SPLITS:
        for label_dir in subdirs(root / split):
            counts[f"{split}/{label_dir.name}"] = len(_images(label_dir))
    return counts
