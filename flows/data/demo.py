"""Deterministic demo product lines cut from scikit-image's bundled texture photographs.

Normal images are random crops with mild photometric jitter; defects are painted onto crops with
exact masks: a scratch, a stain, a missing chunk, and a foreign patch of another texture. Each line
arrives as a real line's data does, in separate folders (normal/, defects/<kind>/, masks/<kind>/);
one line comes without masks, labelled per image only. Sizes are small so that the whole demo
fits and evaluates three lines in minutes on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as textures

DEMO_LINES: dict[str, Callable[[], np.ndarray]] = {
    "brick": textures.brick,
    "grass": textures.grass,
    "gravel": textures.gravel,
}
UNMASKED_LINES = ("gravel",)  # inspected per image: no pixel masks
DEFECT_KINDS = ("scratch", "stain", "missing", "foreign")


@dataclass(frozen=True)
class DemoSize:
    image: int = 128
    normal: int = 160
    per_defect: int = 8


@dataclass(frozen=True)
class DemoFolders:
    """Where one demo line's images were written, as ``data add --normal/--defects/--masks`` takes them."""

    normal: Path
    defects: Path
    masks: Path | None


def generate_line(line: str, out: Path, size: DemoSize = DemoSize(), seed: int = 0,
                  masks: bool = True) -> DemoFolders:
    """Write one demo line's normal images, defect images and (if ``masks``) masks under ``out``."""
    texture = DEMO_LINES[line]().astype(np.float32)
    other = DEMO_LINES[_other_line(line)]().astype(np.float32)
    rng = np.random.default_rng([seed, sorted(DEMO_LINES).index(line)])
    folders = DemoFolders(out / "normal", out / "defects", out / "masks" if masks else None)
    for index in range(size.normal):
        _save(_normal(texture, size.image, rng), folders.normal / f"{index:03d}.png")
    for kind in DEFECT_KINDS:
        for index in range(size.per_defect):
            image = _normal(texture, size.image, rng)
            mask = _paint_defect(kind, image, other, rng)
            _save(image, folders.defects / kind / f"{kind}{index:03d}.png")
            if folders.masks is not None:
                _save(mask.astype(np.float32) * 255, folders.masks / kind / f"{kind}{index:03d}_mask.png")
    return folders


def _other_line(line: str) -> str:
    names = sorted(DEMO_LINES)
    return names[(names.index(line) + 1) % len(names)]


def _normal(texture: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop with mild brightness/contrast jitter and sensor noise."""
    top, left = rng.integers(0, texture.shape[0] - side, 2)
    crop = texture[top : top + side, left : left + side]
    gain, bias = rng.uniform(0.95, 1.05), rng.uniform(-6, 6)
    return crop * gain + bias + rng.normal(0, 2, crop.shape)


def _paint_defect(kind: str, image: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paint one defect of ``kind`` into ``image`` in place and return its boolean mask."""
    side = image.shape[0]
    canvas = Image.new("L", (side, side))
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.integers(side // 4, 3 * side // 4, 2)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.2, 0.35) * side
        dx, dy = half * np.cos(angle), half * np.sin(angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(2, 4)))
    elif kind == "stain":
        rx, ry = rng.uniform(0.06, 0.12, 2) * side
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif kind == "missing":
        radius = rng.uniform(0.08, 0.14) * side
        corners = rng.uniform(0, 2 * np.pi, 5)
        draw.polygon([(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in np.sort(corners)], fill=255)
    else:  # foreign
        half = int(rng.uniform(0.08, 0.13) * side)
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=255)
    mask = np.asarray(canvas) > 0
    if kind == "scratch":
        image[mask] = image[mask] * 0.4 + 150
    elif kind == "stain":
        image[mask] = image[mask] * 0.6
    elif kind == "missing":
        image[mask] = 10
    else:
        top, left = rng.integers(0, other.shape[0] - side, 2)
        image[mask] = other[top : top + side, left : left + side][mask]
    return mask


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
