"""Fits the tests share: a tiny synthetic line fitted once per session, with the paper's options
and with the accuracy options (tests that read a fitted model use these instead of fitting their
own); and a StreamingGaussian streamed from a tensor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flows.config import LineParams
from flows.model.fit import fit_line
from padim_plugin import StreamingGaussian, StreamingPadim

from .synthetic import write_mvtec_folder

# the paper's preset, so that its geometry stays covered now that the flows' default aligns maps
TINY = LineParams(name="line", model={"n_features": 8, "preset": "paper"},
                  data={"image_size": 64, "train_batch_size": 4, "eval_batch_size": 4})
OPTIONS = {"align_maps": True, "channel_reduction": "projection", "pooling": "neighbourhood"}


@dataclass(frozen=True)
class Fit:
    """A calibrated model, its params, its line and the line's test images."""

    model: StreamingPadim
    params: LineParams
    line: Path
    pixels: np.ndarray  # (N, H, W, 3) uint8, as a client sends them

    @property
    def inputs(self) -> np.ndarray:
        """(N, 3, H, W) float32 in 0..1, as an exported model takes them."""
        return self.pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255


def with_options(params: LineParams, options: dict) -> LineParams:
    return params.model_copy(update={"model": params.model.model_copy(update=options)})


def fit_tiny_line(base: Path, params: LineParams = TINY) -> Fit:
    """10 normal training images, 3 normal and 3 defect validation and test images, fitted."""
    line = write_mvtec_folder(base / "line", 10, 3, 3, n_validation=3)
    model, _ = fit_line(params, line, base / "work")
    files = sorted((line / "test").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])
    return Fit(model.cpu().eval(), params, line, pixels)


def stream(embeddings: torch.Tensor, batch_size: int, flush_every: int = 16) -> StreamingGaussian:
    """A StreamingGaussian fed ``embeddings`` (N, C, positions) in batches."""
    gaussian = StreamingGaussian(flush_every=flush_every)
    for batch in embeddings.split(batch_size):
        gaussian.update(batch)
    return gaussian
