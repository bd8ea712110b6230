"""Pooled Gaussians: each position's Gaussian fitted to the samples of a window of positions, or of
all positions, straight from the per-position sufficient statistics.

PaDiM's one Gaussian per patch position assumes aligned images. Pooling the statistics of a k x k
neighbourhood tolerates shifts of about k/2 cells; pooling all positions gives one Gaussian for a
texture or free-lying parts. Counts, sums and scatters add, so the pooled Gaussian is exactly the
one a two-pass fit of the union of the samples gives, and it is computed once, after the streamed
(and merged, or all-reduced) fit: memory stays flat in the number of images, and shards and
devices still give the same model as one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

POOLINGS = ("per_position", "neighbourhood", "shared")


def check_pooling(pooling: str, window: int) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "neighbourhood" and not (window >= 3 and window % 2 == 1):
        raise ValueError(f"a neighbourhood window must be an odd number of positions >= 3, got {window}")


def pool_statistics(count: torch.Tensor, mean: torch.Tensor, scatter: torch.Tensor, grid: tuple[int, int],
                    pooling: str, window: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position centred statistics -> pooled ones.

    ``count`` the images seen (scalar), ``mean`` (P, C), ``scatter`` (P, C, C) about the mean, on a
    ``grid`` of (h, w) = P positions in row-major order. Returns ``(counts (P,), means (P, C),
    scatters (P, C, C))``: per position, the samples of the window around it (clipped at the
    borders), or of every position for ``shared`` (then P = 1).
    """
    check_pooling(pooling, window)
    n_positions, n_channels = mean.shape
    if grid[0] * grid[1] != n_positions:
        raise ValueError(f"a grid of {grid[0]} x {grid[1]} does not hold {n_positions} positions")
    if pooling == "per_position":
        return count.expand(n_positions), mean, scatter
    reference = mean.mean(dim=0)  # sums are taken about it, so large common offsets cancel
    offset = mean - reference
    first = count * offset  # per position: sum of (x - reference)
    second = scatter + count * offset.unsqueeze(-1) * offset.unsqueeze(-2)  # sum of outer products
    counts = count.expand(n_positions)
    if pooling == "shared":
        first, second = first.sum(0, keepdim=True), second.sum(0, keepdim=True)
        counts = counts.sum(0, keepdim=True)
    else:
        first = box_sum(first, grid, window)
        second = box_sum(second.flatten(1), grid, window).view_as(second)
        counts = box_sum(counts.unsqueeze(-1), grid, window).squeeze(-1)
    pooled_offset = first / counts.unsqueeze(-1)
    outer = pooled_offset.unsqueeze(-1) * pooled_offset.unsqueeze(-2)
    pooled_scatter = second - counts[:, None, None] * outer
    return counts, reference + pooled_offset, pooled_scatter


def box_sum(values: torch.Tensor, grid: tuple[int, int], window: int, chunk: int = 2048) -> torch.Tensor:
    """(P, D) values on a (h, w) grid -> the sum over each position's window x window
    neighbourhood, clipped at the borders. Shifted slices of the zero-padded grid are added, rows
    then columns, in the values' own layout (no transposes); ``chunk`` of the D columns at a time
    bound the temporaries."""
    height, width = grid
    radius = window // 2
    out = torch.empty_like(values)
    for start in range(0, values.shape[1], chunk):
        planes = values[:, start : start + chunk].reshape(height, width, -1)
        padded = F.pad(planes, (0, 0, radius, radius, radius, radius))  # zeros: clipped at the borders
        rows = padded[:height].clone()
        for step in range(1, window):
            rows += padded[step : step + height]
        summed = rows[:, :width].clone()
        for step in range(1, window):
            summed += rows[:, step : step + width]
        out[:, start : start + chunk] = summed.reshape(height * width, -1)
    return out
