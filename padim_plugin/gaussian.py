"""Per-position multivariate Gaussians fitted from streamed sufficient statistics.

PaDiM needs, for every patch position, the mean and covariance of the training embeddings. Keeping
every embedding (anomalib's memory bank) makes memory grow with the data set. Here each position
keeps only sufficient statistics, so memory is O(positions x channels^2) whatever the image count.

Numerics: sums are taken of ``x - shift``, where the shift is the first batch's mean, so a large
common offset never meets the sums (the "shifted data" algorithm). Each batch is folded into a
running sum in the embedding's own precision by one fused batched matmul-add, and that sum is
flushed into float64 totals every ``flush_every`` batches, which bounds rounding error whatever
the number of images. Partial fits (shards, devices) merge exactly: the other fit's sums are moved
onto this one's shift by a rank-2 correction and added. The same taken away removes a subset of
the images again (a downdate), so a refit after images were removed needs to embed only those.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import distributed as dist
from torch import nn

from .pooling import pool_statistics

# Batched work over patch positions goes in chunks of this many positions: the temporaries then
# stay small enough to be reused by the allocator instead of being mapped afresh every batch.
POSITION_CHUNK = 256


# a downdate that leaves less than this share of any variance is refused: the rounding of the
# statistics (float32 batch sums, flushed to float64) would grow by the inverse of that share
MIN_KEPT_VARIANCE = 0.1


class NotFittedError(RuntimeError):
    """Raised when a model is used for scoring or export before it has been fitted."""


class UnsafeDowndateError(ValueError):
    """Removing statistics would leave too few images or lose precision: refit from the images."""


def _outer(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.unsqueeze(-1) * vectors.unsqueeze(-2)


class StreamingGaussian(nn.Module):
    """Owns the running statistics of one Gaussian per patch position.

    Buffers (float64): ``count``; ``shift`` (P, C); ``shifted_sum`` and ``shifted_scatter``, the
    sums of ``x - shift`` and of its outer products; and ``grid`` (int64), the spatial shape of the
    P positions, which pooling over neighbours needs. They take their shape from the first batch,
    or from a loaded state dict.
    """

    def __init__(self, flush_every: int = 16) -> None:
        super().__init__()
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.flush_every = flush_every
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("shifted_sum", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("shifted_scatter", torch.zeros(0, 0, 0, dtype=torch.float64))
        self.register_buffer("grid", torch.zeros(0, dtype=torch.int64))
        self.count: torch.Tensor
        self.grid: torch.Tensor
        self.shift: torch.Tensor
        self.shifted_sum: torch.Tensor
        self.shifted_scatter: torch.Tensor
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending_batches = 0

    @property
    def n_samples(self) -> int:
        return int(self.count.item())

    @property
    def shape(self) -> tuple[int, int]:
        """(positions, channels), or (0, 0) before the first batch."""
        return tuple(self.shift.shape)  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget all statistics (the next update starts a new fit)."""
        self.count = torch.zeros_like(self.count)
        self.shift = self.shift.new_zeros(0, 0)
        self.shifted_sum = self.shifted_sum.new_zeros(0, 0)
        self.shifted_scatter = self.shifted_scatter.new_zeros(0, 0, 0)
        self.grid = self.grid.new_zeros(0)
        self._pending, self._pending_batches = None, 0

    def update(self, embedding: torch.Tensor, batch_name: str = "batch") -> None:
        """Fold a batch of embeddings (B, C, *spatial) into the statistics.

        Raises ValueError naming ``batch_name`` when the batch holds NaN or Inf, or when its shape
        does not match the statistics gathered so far.
        """
        if embedding.dim() < 3 or embedding.shape[0] == 0:
            msg = f"{batch_name}: expected a non-empty batch (B, C, ...), got {tuple(embedding.shape)}"
            raise ValueError(msg)
        batch = positions_first(embedding)  # (P, B, C)
        if batch.dtype not in (torch.float32, torch.float64):
            batch = batch.float()
        n_positions, n_batch, n_channels = batch.shape
        if self.n_samples == 0:
            self._allocate(batch)
            self.grid = torch.tensor(embedding.shape[2:], dtype=torch.int64, device=self.grid.device)
        elif self.shape != (n_positions, n_channels):
            msg = (
                f"{batch_name}: embedding has {n_positions} positions x {n_channels} channels, but"
                f" the statistics hold {self.shape[0]} x {self.shape[1]}; all images must be"
                " resized to the same size"
            )
            raise ValueError(msg)
        # any NaN or Inf in the batch reaches its sum (a plain sum: a float64 one costs as much as
        # the scatter update; a finite sum that overflows would overflow the scatter anyway)
        if not torch.isfinite(batch.sum(dim=1)).all():
            msg = f"{batch_name}: embeddings contain NaN or Inf; refusing to fit on them"
            raise ValueError(msg)
        shift = self.shift.to(batch.dtype)
        if self._pending is None or self._pending[0].dtype != batch.dtype:
            self.flush()
            self._pending = (
                batch.new_zeros(n_positions, n_channels),
                batch.new_zeros(n_positions, n_channels, n_channels),
            )
        pending_sum, pending_scatter = self._pending
        for start in range(0, n_positions, POSITION_CHUNK):
            stop = start + POSITION_CHUNK
            centered = batch[start:stop] - shift[start:stop].unsqueeze(1)
            pending_scatter[start:stop].baddbmm_(centered.transpose(1, 2), centered)
            # summed after the shift, like the scatter: a large common offset never meets the sum
            pending_sum[start:stop] += centered.sum(dim=1)
        self.count += n_batch
        self._pending_batches += 1
        if self._pending_batches >= self.flush_every:
            self.flush()

    def _allocate(self, batch: torch.Tensor) -> None:
        # the shift is rounded to float32 so that it is exact in any precision a batch comes in
        shift = batch.mean(dim=1).float().double()
        n_positions, n_channels = shift.shape
        self.shift = shift
        self.shifted_sum = shift.new_zeros(n_positions, n_channels)
        self.shifted_scatter = shift.new_zeros(n_positions, n_channels, n_channels)

    def flush(self) -> None:
        """Add the batches summed in the embeddings' precision to the float64 totals.

        The running buffers are released too: the next batch allocates them again, so a fit
        that is over holds only the float64 totals.
        """
        if self._pending is not None and self._pending_batches:
            pending_sum, pending_scatter = self._pending
            self.shifted_sum += pending_sum
            self.shifted_scatter += pending_scatter
        self._pending, self._pending_batches = None, 0

    def centered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(count, mean, scatter about the mean)`` of everything seen so far."""
        self.flush()
        offset = self.shifted_sum / self.count
        scatter = torch.baddbmm(
            self.shifted_scatter, offset.unsqueeze(-1), offset.unsqueeze(-2), alpha=-self.count.item()
        )
        return self.count, self.shift + offset, scatter

    def _set_centered(self, count: torch.Tensor, mean: torch.Tensor, scatter: torch.Tensor) -> None:
        self._pending, self._pending_batches = None, 0
        self.count = count.to(self.count)
        self.shift = mean.float().double()
        offset = mean - self.shift
        self.shifted_sum = count * offset
        self.shifted_scatter = scatter + count * _outer(offset)

    def merge(self, other: StreamingGaussian) -> StreamingGaussian:
        """Fold another partial fit (e.g. from another shard) into this one; returns self."""
        if other.n_samples == 0:
            return self
        other.flush()
        if self.n_samples == 0:
            self.reset()
            for name in ("count", "shift", "shifted_sum", "shifted_scatter", "grid"):
                setattr(self, name, getattr(other, name).clone())
            return self
        if self.shape != other.shape:
            raise ValueError(f"cannot merge statistics of shape {other.shape} into {self.shape}")
        self._fold(other, sign=1.0)
        return self

    def subtract(self, other: StreamingGaussian, min_kept_variance: float = MIN_KEPT_VARIANCE
                 ) -> StreamingGaussian:
        """Take out the statistics of images that were folded in before (an exact downdate);
        returns self.

        Raises :class:`UnsafeDowndateError`, leaving self unchanged, when fewer than two images
        would remain or when any position would keep less than ``min_kept_variance`` of a
        channel's variance (the removed images carried most of it, and what is left would be
        dominated by rounding): then refit from the remaining images instead.
        """
        if other.n_samples == 0:
            return self
        if self.shape != other.shape:
            raise ValueError(f"cannot subtract statistics of shape {other.shape} from {self.shape}")
        if self.n_samples - other.n_samples < 2:
            msg = (f"removing {other.n_samples} of {self.n_samples} images leaves fewer than 2:"
                   " refit from the remaining images")
            raise UnsafeDowndateError(msg)
        self.flush()
        other.flush()
        moved_sum, half, delta = self._about_own_shift(other)
        diagonal = self.shifted_scatter.diagonal(0, -2, -1)
        before = diagonal - self.shifted_sum.square() / self.count  # each channel's scatter about its mean
        removed = other.shifted_scatter.diagonal(0, -2, -1) + 2 * half * delta
        after = diagonal - removed - (self.shifted_sum - moved_sum).square() / (self.count - other.count)
        kept = torch.where(before > 0, after / before, torch.ones_like(before))
        lowest = float(kept.min())
        if not lowest >= min_kept_variance:
            position, channel = divmod(int(kept.argmin()), kept.shape[1])
            msg = (f"removing {other.n_samples} of {self.n_samples} images would leave {lowest:.2%} of"
                   f" the variance of channel {channel} at position {position} (below"
                   f" {min_kept_variance:.0%}): too little to keep precision, refit from the images")
            raise UnsafeDowndateError(msg)
        self._fold(other, sign=-1.0)
        return self

    def _about_own_shift(self, other: StreamingGaussian) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sum, u, delta)``: about this fit's shift, ``other``'s sum is ``sum`` and its scatter
        is its own plus ``u delta^T + delta u^T`` (u = its sum + its count x delta / 2, delta the
        difference of the shifts), so no (P, C, C) copy is made."""
        delta = other.shift - self.shift
        return other.shifted_sum + other.count * delta, other.shifted_sum + other.count / 2 * delta, delta

    def _fold(self, other: StreamingGaussian, sign: float) -> None:
        """Add (sign 1) or take out (sign -1) another fit's statistics, in place (exact: no
        re-centering, only sums about this fit's shift)."""
        moved_sum, half, delta = self._about_own_shift(other)
        self.count += sign * other.count
        self.shifted_sum.add_(moved_sum, alpha=sign)
        self.shifted_scatter.add_(other.shifted_scatter, alpha=sign)
        self.shifted_scatter.baddbmm_(torch.stack([half, delta], dim=-1), torch.stack([delta, half], dim=-2),
                                      alpha=sign)

    def all_reduce(self) -> None:
        """Pool the partial statistics of every rank of the default process group, in place.

        Counts and means are reduced first (small); each rank then re-centers its scatter on the
        global mean, so one sum all-reduce of the (P, C, C) scatter gives the exact pooled result.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        shapes: list[tuple[tuple[int, int], list[int]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(shapes, (self.shape, self.grid.tolist()) if self.n_samples else None)
        found = next((s for s in shapes if s is not None), None)
        if found is None:
            return
        shape, grid = found
        if self.n_samples == 0:  # a rank that saw no data still joins the collectives
            self.grid = torch.tensor(grid, dtype=torch.int64, device=self.grid.device)
            count = self.count.clone()
            mean = self.shift.new_zeros(shape)
            scatter = self.shift.new_zeros(*shape, shape[-1])
        else:
            count, mean, scatter = self.centered()
        total = count.clone()
        dist.all_reduce(total)
        global_mean = mean * count
        dist.all_reduce(global_mean)
        global_mean /= total
        scatter = scatter + count * _outer(mean - global_mean)
        dist.all_reduce(scatter)
        self._set_centered(total, global_mean, scatter)

    def covariance(self, epsilon: float = 0.01, positions: slice = slice(None)) -> torch.Tensor:
        """Unbiased covariance (float64) plus ``epsilon * I`` (the PaDiM regulariser), for all
        positions or a slice of them."""
        self._require_two_samples()
        self.flush()
        count = self.count.item()
        offset = self.shifted_sum[positions] / count
        covariance = torch.baddbmm(
            self.shifted_scatter[positions], offset.unsqueeze(-1), offset.unsqueeze(-2), alpha=-count
        )
        covariance.div_(count - 1).diagonal(dim1=-2, dim2=-1).add_(epsilon)
        return covariance

    def _require_two_samples(self) -> None:
        if self.n_samples < 2:
            msg = (
                f"a Gaussian needs at least 2 training images, got {self.n_samples}; "
                "add normal images to the training set"
            )
            raise ValueError(msg)

    def mean(self) -> torch.Tensor:
        self.flush()
        return self.shift + self.shifted_sum / self.count

    def whitening(self, epsilon: float = 0.01, dtype: torch.dtype = torch.float32,
                  chunk: int = 256) -> torch.Tensor:
        """``W = (L^-1)^T`` per position (L the Cholesky factor), so d^2(x) = ||(x - mean) @ W||^2.

        Found by a triangular solve against the Cholesky factor rather than by inverting the
        covariance: the factor's condition number is the square root of the covariance's.
        Transposed so that scoring row vectors is one batched matmul over contiguous memory.
        Computed in float64, ``chunk`` positions at a time, so the temporaries stay small.
        """
        return self.fitted(epsilon, dtype, chunk)[1]

    def fitted(self, epsilon: float = 0.01, dtype: torch.dtype = torch.float32, chunk: int = 256,
               pooling: str = "per_position", window: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (P, C) float64, whitening (P, C, C) dtype)`` (see :meth:`whitening`), the
        statistics first pooled (padim_plugin.pooling) over a ``window`` x ``window``
        neighbourhood of positions, or over all of them (then P = 1), once for both."""
        if pooling == "per_position":
            n_positions, mean = self.shape[0], self.mean()
            covariance_of = lambda part: self.covariance(epsilon, part)  # noqa: E731
        else:
            self._require_two_samples()
            counts, mean, scatter = self.pooled(pooling, window)
            n_positions = counts.shape[0]

            def covariance_of(part: slice) -> torch.Tensor:
                covariance = scatter[part] / (counts[part] - 1)[:, None, None]
                covariance.diagonal(dim1=-2, dim2=-1).add_(epsilon)
                return covariance

        n_channels = self.shape[1]
        device = self.shifted_scatter.device
        identity = torch.eye(n_channels, dtype=torch.float64, device=device)
        result = torch.empty(n_positions, n_channels, n_channels, dtype=dtype, device=device)

        def factorise(start: int) -> None:
            factor = torch.linalg.cholesky(covariance_of(slice(start, start + chunk)))
            inverse = torch.linalg.solve_triangular(factor, identity.expand_as(factor), upper=False)
            result[start : start + chunk] = inverse.transpose(1, 2)

        # On the CPU a batched Cholesky factorises one small matrix after the other on one core;
        # chunks in threads (torch releases the GIL) use them all. The statistics were flushed
        # above (mean() or pooled()), so the threads only read them.
        starts = range(0, n_positions, chunk)
        workers = min(torch.get_num_threads(), len(starts)) if device.type == "cpu" else 1
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(factorise, starts))
        else:
            for start in starts:
                factorise(start)
        return mean, result

    def pooled(self, pooling: str, window: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(counts, means, scatters)`` pooled over neighbouring positions or all of them."""
        grid = tuple(self.grid.tolist())
        if len(grid) != 2:
            raise ValueError(f"pooling needs statistics on a 2-D grid of positions, got grid {grid}")
        return pool_statistics(*self.centered(), grid, pooling, window)

    def _save_to_state_dict(self, *args, **kwargs) -> None:
        self.flush()
        super()._save_to_state_dict(*args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        adopt_saved_shapes(self, state_dict, prefix, ("shift", "shifted_sum", "shifted_scatter", "grid"))
        self._pending, self._pending_batches = None, 0
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def adopt_saved_shapes(module: nn.Module, state_dict: dict, prefix: str, names: tuple[str, ...]) -> None:
    """Give lazily shaped buffers the shapes of their saved values before a state dict is loaded.

    The number of patch positions is only known once images are seen, so a fresh module cannot
    know it; loading a fitted model must take it from the saved tensors.
    """
    for name in names:
        saved = state_dict.get(prefix + name)
        current = getattr(module, name)
        if saved is not None and saved.shape != current.shape:
            setattr(module, name, current.new_empty(saved.shape))


def positions_first(embedding: torch.Tensor) -> torch.Tensor:
    """View (B, C, H, W) embeddings as (P, B, C), P = H * W: free when stored positions-first."""
    n_batch, n_channels = embedding.shape[:2]
    return embedding.flatten(2).permute(2, 0, 1).reshape(-1, n_batch, n_channels)


def mahalanobis(embedding: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of every position of every image, batched over positions.

    embedding (B, C, H, W); mean (P, C); whitening (P, C, C), the transposed inverse Cholesky
    factor, so that d(x) = ||(x - mean) @ whitening||. Returns (B, H, W).
    """
    n_batch, _, height, width = embedding.shape
    embedding = positions_first(embedding)  # (P, B, C)
    distance = embedding.new_empty(embedding.shape[0], n_batch)
    for start in range(0, embedding.shape[0], POSITION_CHUNK):
        stop = start + POSITION_CHUNK
        delta = embedding[start:stop] - mean[start:stop].unsqueeze(1)
        distance[start:stop] = torch.bmm(delta, whitening[start:stop]).square_().sum(dim=-1).sqrt_()
    return distance.transpose(0, 1).reshape(n_batch, height, width)
