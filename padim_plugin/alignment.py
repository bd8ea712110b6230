"""Aligned maps: where each tapped layer's feature cells look in the image, and the embedding and
map geometry that follow from it.

The paper's pipeline treats cell i of a stride-s layer as covering pixels i*s .. i*s+s-1: the deeper
layers are upsampled by repeating each cell over its block, and the distance map is upsampled
bilinearly as if cell i were centred on pixel i*s + (s-1)/2. A CNN's cells do not sit there: with
symmetric padding cell i's receptive field is centred on pixel i*s, and the pixels that move it most
(its effective receptive field) lie a few pixels above and left of that in a stride-2 network. So
a defect's deep features land several cells away from its shallow ones, and its map lands about
11 px down and right of it (EfficientNet-Lite0 at 256 px).

Aligned maps measure each layer's cell centres once, by pushing a probe through the backbone: the
centroid of |d feature / d pixel| of central cells. Every cell of the embedding grid then takes,
from each deeper layer, the cell whose centre is nearest its own (still a nearest-neighbour
upsampling, only aligned), and the map is interpolated from the cells' measured centres.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import weights_digest

PROBE_SIZE = 256  # large enough that a central cell's receptive field stays inside the probe
PROBE_IMAGES = 4
# offsets already measured in this process, by backbone weights and tapped layers: a measurement
# costs about a second on a CPU, and every model of one backbone gets the same answer
_MEASURED: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}


def measured_offsets(extractor: nn.Module, layers: tuple[str, ...], strides: list[int]) -> torch.Tensor:
    """:func:`cell_offsets` of this backbone and these layers, measured once per process."""
    key = (weights_digest(extractor), layers)
    if key not in _MEASURED:
        _MEASURED[key] = cell_offsets(extractor, strides)
    return _MEASURED[key].clone()


def cell_offsets(extractor: nn.Module, strides: list[int], seed: int = 0) -> torch.Tensor:
    """(layers, 2): cell (i, j) of layer l is centred on pixel
    (i * strides[l] + offsets[l, 0], j * strides[l] + offsets[l, 1]), its centre being the centroid
    of the gradient magnitude of its features over a seeded batch of noise probes."""
    generator = torch.Generator().manual_seed(seed)
    device = next(extractor.parameters()).device
    pixels = torch.arange(PROBE_SIZE, dtype=torch.float64, device=device)
    offsets = []
    # it may first be needed while scoring, where inference mode forbids gradients
    with torch.inference_mode(False), torch.enable_grad():
        probe = 0.5 * torch.randn(PROBE_IMAGES, 3, PROBE_SIZE, PROBE_SIZE, generator=generator)
        probe = probe.to(device).requires_grad_(True)
        features = extractor(probe)
        for feature, stride in zip(features, strides, strict=True):
            row, column = feature.shape[-2] // 2, feature.shape[-1] // 2
            (gradient,) = torch.autograd.grad(feature[..., row, column].abs().sum(), probe,
                                              retain_graph=True)
            weight = gradient.abs().sum(dim=(0, 1)).double()
            centre_row = (weight.sum(dim=1) * pixels).sum() / weight.sum()
            centre_column = (weight.sum(dim=0) * pixels).sum() / weight.sum()
            offsets.append(torch.stack([centre_row - row * stride, centre_column - column * stride]))
    return torch.stack(offsets).float().cpu()


def nearest_cells(n_cells: int, stride: int, offset: float, source_stride: int, source_offset: float,
                  n_source: int) -> list[int]:
    """For each of ``n_cells`` cells (centres i * stride + offset), the index of the source layer's
    cell with the nearest centre (k * source_stride + source_offset), within 0..n_source-1."""
    centres = torch.arange(n_cells, dtype=torch.float64) * stride + offset
    nearest = ((centres - source_offset) / source_stride).round().long().clamp(0, n_source - 1)
    return nearest.tolist()


def linear_from_centres(n_in: int, n_out: int, offset: float, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) linear interpolation onto pixels 0..n_out-1 from n_in cells centred on
    i * (n_out / n_in) + offset; beyond the outer centres the border cell's value holds (as
    ``F.interpolate(..., align_corners=False)`` does, which is this with offset (stride - 1) / 2)."""
    position = ((torch.arange(n_out, dtype=torch.float64) - offset) * (n_in / n_out)).clamp(0, n_in - 1)
    lower = position.floor().long().clamp(max=n_in - 1)
    upper = (lower + 1).clamp(max=n_in - 1)
    fraction = position - lower
    operator = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    operator.index_put_((rows, lower), 1 - fraction, accumulate=True)
    operator.index_put_((rows, upper), fraction, accumulate=True)
    return operator.to(dtype)
