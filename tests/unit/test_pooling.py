"""Pooled Gaussians against a two-pass fit of the pooled samples, computed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim_plugin import StreamingPadimModel
from padim_plugin.gaussian import StreamingGaussian

from ..fits import stream

GRID = (5, 6)


def embeddings(n_images: int = 7, channels: int = 4, seed: int = 0) -> torch.Tensor:
    """(N, C, h, w) correlated channels, a different mean per position, a large common offset."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
    noise = torch.randn(n_images, *GRID, channels, generator=generator, dtype=torch.float64) @ mixing
    position_means = torch.randn(*GRID, channels, generator=generator, dtype=torch.float64) * 3
    return (noise + position_means + 100.0).permute(0, 3, 1, 2).contiguous()


def two_pass_of(samples: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and scatter about the mean of (n, C) samples."""
    mean = samples.mean(axis=0)
    centered = samples - mean
    return len(samples), mean, centered.T @ centered


def window_samples(data: np.ndarray, row: int, column: int, radius: int) -> np.ndarray:
    """All images' embeddings at the positions of the window around (row, column), clipped."""
    rows = slice(max(row - radius, 0), row + radius + 1)
    columns = slice(max(column - radius, 0), column + radius + 1)
    return data[:, :, rows, columns].transpose(0, 2, 3, 1).reshape(-1, data.shape[1])


@pytest.mark.parametrize("window", [3, 5])
def test_neighbourhood_pooling_equals_a_two_pass_fit_of_the_window(window: int) -> None:
    data = embeddings()
    counts, means, scatters = stream(data, batch_size=3).pooled("neighbourhood", window)
    numpy_data = data.numpy()
    for row in range(GRID[0]):
        for column in range(GRID[1]):
            count, mean, scatter = two_pass_of(window_samples(numpy_data, row, column, window // 2))
            position = row * GRID[1] + column
            assert counts[position].item() == count
            np.testing.assert_allclose(means[position].numpy(), mean, rtol=1e-12)
            scale = abs(scatter).max()
            np.testing.assert_allclose(scatters[position].numpy(), scatter, rtol=1e-9, atol=1e-9 * scale)


def test_shared_pooling_is_one_gaussian_of_every_sample_at_every_position() -> None:
    data = embeddings()
    counts, means, scatters = stream(data, batch_size=4).pooled("shared")
    count, mean, scatter = two_pass_of(data.permute(0, 2, 3, 1).reshape(-1, data.shape[1]).numpy())
    assert counts.tolist() == [count]
    np.testing.assert_allclose(means[0].numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(scatters[0].numpy(), scatter, rtol=1e-9)


def test_pooling_after_merging_shards_equals_pooling_one_fit() -> None:
    data = embeddings(n_images=9)
    whole = stream(data, batch_size=9).pooled("neighbourhood", 3)
    shards = StreamingGaussian().merge(stream(data[:4], 2)).merge(stream(data[4:], 5))
    merged = shards.pooled("neighbourhood", 3)
    for expected, actual in zip(whole, merged, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-9)


def test_a_shared_gaussian_scores_every_position_alike() -> None:
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = StreamingPadimModel(n_features=12, pooling="shared").fit(images.split(3)).eval()
    assert torch.equal(model.whitening, model.whitening[:1].expand_as(model.whitening))
    assert torch.equal(model.mean, model.mean[:1].expand_as(model.mean))
    with torch.no_grad():
        samples = model.embed(images).permute(0, 2, 3, 1).reshape(-1, 12).double().numpy()
    count, _, scatter = two_pass_of(samples)
    precision = np.linalg.inv(scatter / (count - 1) + 0.01 * np.eye(12))  # W W^T is the inverse covariance
    whitening = model.whitening[0].double().numpy()
    scale = abs(precision).max()
    np.testing.assert_allclose(whitening @ whitening.T, precision, rtol=1e-4, atol=1e-4 * scale)


def test_bad_pooling_settings_are_refused_by_value() -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        StreamingPadimModel(weights=None, pooling="mean")
    with pytest.raises(ValueError, match="odd number of positions >= 3, got 4"):
        StreamingPadimModel(weights=None, pooling="neighbourhood", pooling_window=4)
