"""Score arrays of images with a fitted StreamingPadim: the whole anomalib pipeline in one call.

Input: uint8 images (N, H, W, 3), RGB; grey images may come as (N, H, W). Output: ``pred_score``
(N,) normalised so that the model's threshold sits at 0.5, ``pred_label`` (N,) 0/1, and
``anomaly_map`` (N, H, W) at the input's size. Used by the MLflow pyfunc; needs no MLOps package.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def raw_image_threshold(model: torch.nn.Module) -> float:
    """The image threshold in raw score units, as the model's post-processor holds it."""
    return float(model.post_processor._image_threshold)  # noqa: SLF001  # anomalib keeps it private


def score_arrays(model: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run the full anomalib pipeline (pre-processor, model, post-processor) on a batch."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W), got shape {array.shape}")
    batch = torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).float()  # a writable copy
    if array.dtype == np.uint8:
        batch = batch / 255.0
    batch = batch.expand(-1, 3, -1, -1)
    with torch.no_grad():
        output = model(batch)
    anomaly_map = F.interpolate(output.anomaly_map.float(), size=array.shape[1:3], mode="bilinear",
                                align_corners=False)
    return {
        "pred_score": output.pred_score.flatten().float().numpy(),
        "pred_label": output.pred_label.flatten().to(torch.int64).numpy(),
        "anomaly_map": anomaly_map[:, 0].numpy(),
    }
