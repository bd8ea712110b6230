"""Simple statistics of an image that show a change of camera, lighting or focus before scores
move: size, brightness, contrast and sharpness. Kept for the training images at fit time and for
each image scored in production (padim_plugin.score_log), so that a monitor can compare them.

They are measured on every second pixel of every second row (a fraction of a millisecond for a
256 px image, so that logging stays cheap), the same way at fit time and in production. Needs
numpy only, so that every scoring path (the MLflow pyfunc, the exported runtime) can use it.
"""

from __future__ import annotations

import numpy as np

STATISTICS = ("width", "height", "brightness", "contrast", "sharpness")
_GREY = np.full(3, 1 / (3 * 255), np.float32)  # the mean of R, G and B, scaled to 0..1


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """Of a uint8 image (H, W) or (H, W, C): its size in pixels and, on its grey levels (0..1),
    ``brightness`` the mean, ``contrast`` the standard deviation and ``sharpness`` the mean
    absolute Laplacian."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    sampled = pixels[::2, ::2]
    if sampled.ndim == 3 and sampled.shape[2] == 3:
        grey = sampled.astype(np.float32) @ _GREY
    else:
        grey = sampled.reshape(sampled.shape[:2]).astype(np.float32) / 255
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    sharpness = float(np.abs(laplacian).mean()) if laplacian.size else 0.0
    return {"width": float(width), "height": float(height), "brightness": float(grey.mean()),
            "contrast": float(grey.std()), "sharpness": sharpness}
