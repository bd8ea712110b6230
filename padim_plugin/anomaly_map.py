"""From per-patch Mahalanobis distances to an image-sized, smoothed anomaly map."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .alignment import linear_from_centres


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at 4 sigma (the kernel size anomalib and scipy use)."""
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


class AnomalyMapGenerator(nn.Module):
    """Bilinear upsampling to the image size, then a Gaussian blur with reflected borders.

    Both steps are linear and separable, so along each axis they collapse into one small matrix
    (output size x patch-grid size): the map is ``A_h @ distance @ A_w^T``. The matrices are found
    by pushing the identity through the very same interpolate/pad/conv operations, so the result
    equals upsample-then-blur, at a fraction of a 2-D (2r+1)^2 convolution's cost.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma}")
        kernel = gaussian_kernel1d(sigma)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel", kernel.view(1, 1, -1), persistent=False)

    def axis_operator(self, n_in: int, n_out: int, like: torch.Tensor,
                      cell_offset: float | None = None) -> torch.Tensor:
        """(n_out, n_in) matrix: linear upsampling, then the 1-D blur. The cells are centred as
        ``F.interpolate(align_corners=False)`` places them (the paper's map), or, for aligned maps,
        on pixels i * stride + ``cell_offset`` (padim_plugin.alignment)."""
        if n_out <= self.radius:
            msg = f"image side {n_out} is too small for a blur of radius {self.radius} pixels"
            raise ValueError(msg)
        if cell_offset is None:
            identity = torch.eye(n_in, dtype=like.dtype, device=like.device).unsqueeze(1)
            upsampled = F.interpolate(identity, size=n_out, mode="linear", align_corners=False)
        else:
            operator = linear_from_centres(n_in, n_out, cell_offset, like.dtype).to(like.device)
            upsampled = operator.transpose(0, 1).unsqueeze(1)
        padded = F.pad(upsampled, (self.radius, self.radius), mode="reflect")
        return F.conv1d(padded, self.kernel.to(like.dtype)).squeeze(1).transpose(0, 1)

    def forward(self, distance: torch.Tensor, image_size: tuple[int, int] | torch.Size,
                cell_offsets: tuple[float, float] | None = None) -> torch.Tensor:
        """distance (B, 1, h, w) -> anomaly map (B, 1, H, W) with (H, W) = image_size; the cells
        centred as the paper has them, or on (i * stride + row offset, j * stride + column offset)."""
        height, width = int(image_size[0]), int(image_size[1])
        row_offset, column_offset = (None, None) if cell_offsets is None else cell_offsets
        rows = self.axis_operator(distance.shape[-2], height, distance, row_offset)
        columns = self.axis_operator(distance.shape[-1], width, distance, column_offset)
        return rows @ distance @ columns.transpose(0, 1)


def image_score(anomaly_map: torch.Tensor, top_k_percent: float | None = None) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1): the map's maximum (the paper), or the mean of its ``top_k_percent``
    highest pixels (at least one), which a single hot pixel of a normal image moves less."""
    flat = anomaly_map.flatten(1)
    if top_k_percent is None:
        return flat.amax(dim=1, keepdim=True)
    k = max(1, math.ceil(flat.shape[1] * top_k_percent / 100))
    return flat.topk(k, dim=1).values.mean(dim=1, keepdim=True)

