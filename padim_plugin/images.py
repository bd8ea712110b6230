"""One decoder for every image the product reads: fit, evaluation, validation and serving.

Cameras write 8- and 16-bit greyscale (PNG, TIFF), RGB, RGBA, palette PNG, BMP and JPEG. Each is
decoded to the same thing, an RGB ``uint8`` array (H, W, 3), so a model sees identical pixels
whichever path the image took. Images of more than 8 bits per sample are scaled by their real
range (their own minimum to maximum), not clipped at 255 as ``Image.convert("RGB")`` does.
Truncated, empty, animated and non-image files raise :class:`ImageDecodeError` naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's modes for one sample of more than 8 bits: 16-bit PNG/TIFF, 32-bit integer and float.
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageDecodeError(ValueError):
    """A file cannot be used as an image; the message names the file and the reason."""


def decode_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as an RGB uint8 array (H, W, 3)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    return _decode(path, str(path))


def decode_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """An encoded image (PNG, JPEG, TIFF, BMP bytes, as a camera client sends) as RGB uint8."""
    if not data:
        raise ImageDecodeError(f"{name}: empty (0 bytes)")
    return _decode(io.BytesIO(data), name)


def _decode(source: Path | io.BytesIO, name: str) -> np.ndarray:
    """Decode an opened source; every error names ``name`` (the file, or the request's item)."""
    try:
        with Image.open(source) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                raise ImageDecodeError(
                    f"{name}: animated or multi-page image ({opened.n_frames} frames); one frame expected"
                )
            opened.load()
            return to_rgb8(opened)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{name}: too large to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, ImageDecodeError):
            raise
        raise ImageDecodeError(f"{name}: does not decode as an image ({error})") from None


def to_rgb8(image: Image.Image) -> np.ndarray:
    """An opened Pillow image as RGB uint8; wide greyscale is stretched over its own value range."""
    if image.mode in WIDE_MODES:
        grey = np.asarray(image, dtype=np.float64)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        grey8 = np.rint(scaled).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # a palette with transparency: resolve it before dropping alpha
    return np.array(image.convert("RGB"))  # a writable copy: torch warns on read-only arrays


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 pixels (H, W) grey or (H, W, 3) RGB as PNG bytes: lossless, so they decode as given."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
