"""Listing an MVTec AD layout folder: ``train/good``, ``test/good``, ``test/<defect>``,
``ground_truth/<defect>/<stem>_mask.<ext>``, in any common image format, plus an optional
``validation/`` folder (``good`` and defect kinds) for thresholds.

Masks are optional and paired with images by name, not by sort order: a defect image without a
mask is labelled per image only. No anomalib import here, so tools that only look at files stay
quick to start.
"""

from __future__ import annotations

from pathlib import Path

from pandas import DataFrame

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
NORMAL = "good"
# role folders and the anomalib split name of each
ROLE_SPLITS = {"train": "train", "validation": "val", "test": "test"}
PROVENANCE = "provenance.csv"  # beside the role folders: where images added by verdicts came from


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def mask_candidates(folder: Path, stem: str) -> list[Path]:
    """Masks in ``folder`` named for image ``stem``: ``<stem>_mask.<ext>`` first, then ``<stem>.<ext>``."""
    return [
        folder / f"{name}{extension}"
        for name in (f"{stem}_mask", stem)
        for extension in IMAGE_EXTENSIONS
        if (folder / f"{name}{extension}").is_file()
    ]


def find_mask(root: Path, defect: str, stem: str) -> Path | None:
    """The ground-truth mask of ``test/<defect>/<stem>.*``, or None."""
    candidates = mask_candidates(root / "ground_truth" / defect, stem)
    return candidates[0] if candidates else None


def mvtec_samples(root: str | Path, split: str | None = None) -> DataFrame:
    """One row per image of an MVTec-layout folder: image_path, split (train, val, test), label,
    label_index, mask_path ("" for normal images and for defect images without a mask)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    rows = []
    for role, split_name in ROLE_SPLITS.items():
        role_dir = root / role
        if not role_dir.is_dir():
            continue
        for label_dir in sorted(p for p in role_dir.iterdir() if p.is_dir()):
            abnormal = label_dir.name != NORMAL
            for image in sorted(p for p in label_dir.iterdir() if is_image(p)):
                mask = find_mask(root, label_dir.name, image.stem) if abnormal else None
                rows.append({
                    "path": str(root),
                    "split": split_name,
                    "label": label_dir.name,
                    "image_path": str(image),
                    "label_index": int(abnormal),  # anomalib's LabelName: 0 normal, 1 abnormal
                    "mask_path": str(mask) if mask else "",
                })
    samples = DataFrame(rows, columns=["path", "split", "label", "image_path", "label_index", "mask_path"])
    if samples.empty:
        raise FileNotFoundError(f"no images under {root}/train, {root}/validation or {root}/test")
    samples.attrs["task"] = "segmentation" if (samples.mask_path != "").any() else "classification"
    if split is not None:
        samples = samples[samples.split == str(split)].reset_index(drop=True)
    return samples
