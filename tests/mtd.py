"""The Magnetic Tile Defects set as a line's data usually arrives: flat folders, masks optional.

Shared by the real-data tests and bench/real_lines.py. Folders of symbolic links: nothing is
copied until ``padim-mlops data add`` imports them.
"""

from __future__ import annotations

from pathlib import Path

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
