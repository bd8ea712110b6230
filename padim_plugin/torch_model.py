"""PaDiM as a pure torch module: embeddings in, streamed Gaussian fit, anomaly maps out.

Usable without Lightning::

    model = StreamingPadimModel(backbone="efficientnet_lite0", n_features=100)
    model.fit(batches)            # any iterable of (B, 3, H, W) normalised image tensors
    result = model(images)        # InferenceBatch(pred_score, anomaly_map)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn import functional as F

from .alignment import measured_offsets, nearest_cells
from .anomaly_map import AnomalyMapGenerator, image_score
from .backbones import create_feature_extractor, default_layers
from .gaussian import NotFittedError, StreamingGaussian, adopt_saved_shapes, mahalanobis
from .pooling import check_pooling

# how the embedding's channels are chosen: the paper's seeded subset, or a seeded projection of all
CHANNEL_REDUCTIONS = ("random_subset", "projection")


def random_channel_subset(n_total: int, n_features: int, seed: int) -> torch.Tensor:
    """Sorted, seeded random subset of ``n_features`` of ``n_total`` embedding channels.

    Sorted, because the Mahalanobis distance does not depend on channel order, and sorted indices
    let each layer's channels be picked before its map is upsampled.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=generator)[:n_features].sort().values


def semi_orthogonal_projection(n_total: int, n_features: int, seed: int) -> torch.Tensor:
    """(n_total, n_features) seeded matrix with orthonormal columns (Kim et al. 2021, "Semi-orthogonal
    embedding for efficient unsupervised anomaly segmentation"): every channel contributes, and the
    projection keeps distances better than dropping channels does."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n_total, n_features, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * r.diagonal().sign()).float()  # signs fixed: the same matrix wherever QR runs


def as_three_channels(images: torch.Tensor) -> torch.Tensor:
    """Grey (1 channel) is repeated to RGB, RGBA drops alpha; anything else is an error."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    channels = images.shape[1]
    if channels == 3:
        return images
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    if channels == 4:
        return images[:, :3]
    raise ValueError(f"images must have 1, 3 or 4 channels, got {channels} ({tuple(images.shape)})")


class StreamingPadimModel(nn.Module):
    """PaDiM whose per-position Gaussians are fitted from streamed sufficient statistics.

    In training mode ``forward`` folds the batch into the statistics; ``finalize`` turns them into
    the mean and whitening factor used in eval mode to score images.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] | None = None,
        n_features: int | None = None,
        weights: str | Path | None = "imagenet",
        seed: int = 0,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        top_k_percent: float | None = None,
        pooling: str = "per_position",
        pooling_window: int = 3,
        align_maps: bool = False,
        channel_reduction: str = "random_subset",
    ) -> None:
        super().__init__()
        check_pooling(pooling, pooling_window)
        if channel_reduction not in CHANNEL_REDUCTIONS:
            msg = f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}"
            raise ValueError(msg)
        self.channel_reduction = channel_reduction
        self.pooling, self.pooling_window = pooling, pooling_window
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        if top_k_percent is not None and not 0 < top_k_percent <= 100:
            msg = f"top_k_percent must be in (0, 100] or None (the map's maximum), got {top_k_percent}"
            raise ValueError(msg)
        self.top_k_percent = top_k_percent
        self.backbone = backbone
        self.layers = list(layers) if layers else list(default_layers(backbone))
        self.epsilon = epsilon
        self.feature_extractor = create_feature_extractor(backbone, self.layers, weights)
        self.layer_channels: list[int] = list(self.feature_extractor.feature_info.channels())
        n_total = sum(self.layer_channels)
        n_features = n_total if n_features is None else n_features
        if not 0 < n_features <= n_total:
            msg = f"n_features must be in 1..{n_total} for {backbone} {self.layers}, got {n_features}"
            raise ValueError(msg)
        projecting = channel_reduction == "projection"
        self.register_buffer("channel_index", torch.empty(0, dtype=torch.long) if projecting
                             else random_channel_subset(n_total, n_features, seed))
        self.register_buffer("projection", semi_orthogonal_projection(n_total, n_features, seed)
                             if projecting else torch.empty(0, 0))
        self.channel_index: torch.Tensor
        self.projection: torch.Tensor
        self._split_channel_index()
        self.align_maps = align_maps
        self.strides: list[int] = list(self.feature_extractor.feature_info.reduction())
        # measured on first use (padim_plugin.alignment), then saved with the model
        self.register_buffer("cell_offsets", torch.empty(0, 2))
        self.cell_offsets: torch.Tensor
        self.gaussian = StreamingGaussian()
        self.register_buffer("mean", torch.empty(0, 0))
        self.register_buffer("whitening", torch.empty(0, 0, 0))
        self.mean: torch.Tensor
        self.whitening: torch.Tensor
        self.anomaly_map = AnomalyMapGenerator(sigma)

    def train(self, mode: bool = True) -> StreamingPadimModel:
        """The backbone stays in eval mode: its BatchNorm statistics are ImageNet's, not ours."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    @property
    def n_features(self) -> int:
        if self.channel_reduction == "projection":
            return self.projection.shape[1]
        return self.channel_index.numel()

    @property
    def is_fitted(self) -> bool:
        return self.whitening.numel() > 0

    def _split_channel_index(self) -> None:
        """Per layer, the local indices of its selected channels (plain lists: export-friendly)."""
        self._layer_index: list[list[int]] = []
        start = 0
        index = self.channel_index.tolist()
        for channels in self.layer_channels:
            self._layer_index.append([i - start for i in index if start <= i < start + channels])
            start += channels

    def measured_cell_offsets(self) -> torch.Tensor | None:
        """(layers, 2) centres of each layer's cells for aligned maps (measured once, on first use,
        from this model's backbone); None for the paper's geometry."""
        if not self.align_maps:
            return None
        if self.cell_offsets.numel() == 0:
            measured = measured_offsets(self.feature_extractor, tuple(self.layers), self.strides)
            self.cell_offsets = measured.to(self.cell_offsets.device)
        return self.cell_offsets

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's maps of the three layers, (B, C_l, h_l, w_l) each: what depends on the
        images and the backbone only, never on the fit (so they can be kept and scored again)."""
        # channels-last input: oneDNN's convolutions run about 1.5x faster on the CPU (measured in
        # bench/runtimes.py), and the result is the same up to float rounding
        images = as_three_channels(images).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return list(self.feature_extractor(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, n_features, h, w) at the resolution of the first layer."""
        return self.embed_features(self.features(images))

    def embed_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The backbone's maps reduced and placed into patch embeddings (B, n_features, h, w).

        Each layer is reduced at its own resolution (its channels of the random subset, or its
        rows of the projection), then placed once, straight into a positions-first (h, w, B, C)
        buffer: the layout the Gaussian consumes, with no intermediate upsampled copies. Placing
        repeats each deeper cell over its block (the paper's nearest upsampling) or, for aligned
        maps, takes for each cell the deeper cell whose centre is nearest.
        """
        offsets = self.measured_cell_offsets()
        height, width = features[0].shape[-2:]
        embedding = features[0].new_empty(height, width, features[0].shape[0], self.n_features)
        start = 0
        for layer, feature in enumerate(features):
            reduced = self._reduce(feature, layer)  # (h_l, w_l, B, c)
            if reduced is None:
                continue
            if self.channel_reduction == "projection":  # every layer adds into all channels
                target, add = embedding, layer > 0
            else:  # each layer fills its own slice of channels
                stop = start + reduced.shape[-1]
                target, add, start = embedding[..., start:stop], False, stop
            self._place(target, reduced, layer, offsets, add)
        return embedding.permute(2, 3, 0, 1)

    def _reduce(self, feature: torch.Tensor, layer: int) -> torch.Tensor | None:
        """(B, C_l, h_l, w_l) -> (h_l, w_l, B, c): the layer's channels of the subset (None when it
        has none), or its part of the projection."""
        positions_first = feature.permute(2, 3, 0, 1)
        if self.channel_reduction == "projection":
            first = sum(self.layer_channels[:layer])
            return positions_first @ self.projection[first : first + feature.shape[1]]
        index = self._layer_index[layer]
        if not index:
            return None
        return positions_first[..., index] if len(index) < feature.shape[1] else positions_first

    def _place(self, target: torch.Tensor, source: torch.Tensor, layer: int,
               offsets: torch.Tensor | None, add: bool) -> None:
        """target (h, w, B, c) <- source (h_l, w_l, B, c) upsampled: nearest, or aligned nearest."""
        height, width = target.shape[:2]
        h, w = source.shape[:2]
        if offsets is not None:
            rows, columns = (
                torch.tensor(nearest_cells(n, self.strides[0], float(offsets[0, axis]), self.strides[layer],
                                           float(offsets[layer, axis]), n_source), device=source.device)
                for axis, (n, n_source) in enumerate(((height, h), (width, w))))
            upsampled = source.index_select(0, rows).index_select(1, columns)
        elif height % h or width % w:  # no integer scale: interpolate
            upsampled = F.interpolate(source.permute(2, 3, 0, 1), size=(height, width), mode="nearest")
            upsampled = upsampled.permute(2, 3, 0, 1)
        else:  # a view of each cell repeated over its block
            target = target.unflatten(0, (h, height // h)).unflatten(2, (w, width // w))
            upsampled = source[:, None, :, None].expand_as(target)
        if add:
            target.add_(upsampled)
        else:
            target.copy_(upsampled)

    def accumulate(self, images: torch.Tensor, batch_name: str = "batch") -> None:
        """Fold a batch of normal images into the statistics (any mode)."""
        self.gaussian.update(self.embed(images), batch_name=batch_name)

    def reset(self) -> None:
        """Drop the statistics and the fitted Gaussian, e.g. before a new fit."""
        self.gaussian.reset()
        self.mean = self.mean.new_empty(0, 0)
        self.whitening = self.whitening.new_empty(0, 0, 0)

    def finalize(self) -> None:
        """Turn the statistics into the float32 mean and whitening factor used for scoring."""
        if self.gaussian.n_samples == 0:
            raise ValueError("no training images were seen: the training set is empty")
        mean, whitening = self.gaussian.fitted(self.epsilon, torch.float32, pooling=self.pooling,
                                               window=self.pooling_window)
        mean = mean.float()
        n_positions, n_channels = self.gaussian.shape
        # one shared Gaussian is scored at every position like the per-position ones
        self.whitening = whitening.expand(n_positions, n_channels, n_channels).contiguous()
        self.mean = mean.expand(n_positions, n_channels).contiguous()

    def fit(self, batches: Iterable[torch.Tensor]) -> StreamingPadimModel:
        """Fit on an iterable of image batches from scratch (the pure-torch path); returns self."""
        self.reset()
        for number, images in enumerate(batches):
            self.accumulate(images, batch_name=f"training batch {number}")
        self.finalize()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        adopt_saved_shapes(self, state_dict, prefix, ("mean", "whitening", "cell_offsets"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._split_channel_index()  # the saved subset replaces the seeded one

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        if self.training:
            self.accumulate(images)
            return torch.empty(0)
        return self.score_features(self.features(images), images.shape[-2:])

    def score_features(self, features: Sequence[torch.Tensor],
                       image_size: tuple[int, int] | torch.Size) -> InferenceBatch:
        """Scores and maps of images of ``image_size`` from their backbone maps (``features``):
        what ``forward`` gives for the images themselves."""
        if not self.is_fitted:
            raise NotFittedError("StreamingPadim is not fitted yet: fit it on normal images first")
        embedding = self.embed_features(features)
        positions = embedding.shape[-2] * embedding.shape[-1]
        if positions != self.mean.shape[0]:
            msg = (
                f"images of size {tuple(image_size)} give {positions} patch positions, but"
                f" the model was fitted with {self.mean.shape[0]}: resize them to the training size"
            )
            raise ValueError(msg)
        distance = mahalanobis(embedding, self.mean, self.whitening).unsqueeze(1)
        offsets = self.measured_cell_offsets()
        first_layer = None if offsets is None else (float(offsets[0, 0]), float(offsets[0, 1]))
        anomaly_map = self.anomaly_map(distance, image_size, first_layer)
        pred_score = image_score(anomaly_map, self.top_k_percent)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
