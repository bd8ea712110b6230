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

from .anomaly_map import AnomalyMapGenerator, image_score
from .backbones import create_feature_extractor, default_layers
from .gaussian import NotFittedError, StreamingGaussian, adopt_saved_shapes, mahalanobis
from .pooling import check_pooling


def random_channel_subset(n_total: int, n_features: int, seed: int) -> torch.Tensor:
    """Sorted, seeded random subset of ``n_features`` of ``n_total`` embedding channels.

    Sorted, because the Mahalanobis distance does not depend on channel order, and sorted indices
    let each layer's channels be picked before its map is upsampled.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=generator)[:n_features].sort().values


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
    ) -> None:
        super().__init__()
        check_pooling(pooling, pooling_window)
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
        self.register_buffer("channel_index", random_channel_subset(n_total, n_features, seed))
        self.channel_index: torch.Tensor
        self._split_channel_index()
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

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, n_features, h, w) at the resolution of the first layer.

        Channels are selected per layer before the deeper maps are upsampled (nearest), and each
        layer is written once, straight into a positions-first (h, w, B, C) buffer: the layout the
        Gaussian consumes, with no intermediate upsampled copies.
        """
        # channels-last input: oneDNN's convolutions run about 1.5x faster on the CPU (measured in
        # bench/runtimes.py), and the result is the same up to float rounding
        images = as_three_channels(images).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            features = self.feature_extractor(images)
        height, width = features[0].shape[-2:]
        embedding = features[0].new_empty(height, width, images.shape[0], self.n_features)
        start = 0
        for feature, index in zip(features, self._layer_index, strict=True):
            if not index:
                continue
            if len(index) < feature.shape[1]:
                feature = feature[:, index]
            stop = start + feature.shape[1]
            h, w = feature.shape[-2:]
            if height % h or width % w:  # no integer scale: interpolate first
                feature = F.interpolate(feature, size=(height, width), mode="nearest")
                h, w = height, width
            target = embedding[..., start:stop].unflatten(0, (h, height // h))
            target = target.unflatten(2, (w, width // w))
            target.copy_(feature.permute(2, 3, 0, 1)[:, None, :, None].expand_as(target))
            start = stop
        return embedding.permute(2, 3, 0, 1)

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
        whitening = self.gaussian.whitening(self.epsilon, torch.float32, pooling=self.pooling,
                                            window=self.pooling_window)
        mean = self.gaussian.mean(self.pooling, self.pooling_window).float()
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        adopt_saved_shapes(self, state_dict, prefix, ("mean", "whitening"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._split_channel_index()  # the saved subset replaces the seeded one

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        if self.training:
            self.accumulate(images)
            return torch.empty(0)
        if not self.is_fitted:
            raise NotFittedError("StreamingPadim is not fitted yet: fit it on normal images first")
        embedding = self.embed(images)
        positions = embedding.shape[-2] * embedding.shape[-1]
        if positions != self.mean.shape[0]:
            msg = (
                f"images of size {tuple(images.shape[-2:])} give {positions} patch positions, but"
                f" the model was fitted with {self.mean.shape[0]}: resize them to the training size"
            )
            raise ValueError(msg)
        distance = mahalanobis(embedding, self.mean, self.whitening).unsqueeze(1)
        anomaly_map = self.anomaly_map(distance, images.shape[-2:])
        pred_score = image_score(anomaly_map, self.top_k_percent)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
