"""The separable, matrix-form map equals anomalib's upsample + 2-D Gaussian blur."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as AnomalibMap

from padim_plugin.anomaly_map import AnomalyMapGenerator


@pytest.mark.parametrize(("patches", "image"), [((16, 16), (64, 64)), ((13, 20), (50, 81))])
def test_map_equals_anomalib_upsample_then_blur(patches: tuple[int, int], image: tuple[int, int]) -> None:
    distance = torch.rand(3, 1, *patches, dtype=torch.float64) * 10
    reference = AnomalibMap(sigma=4)
    expected = reference.smooth_anomaly_map(reference.up_sample(distance.float(), image)).double()
    actual = AnomalyMapGenerator(sigma=4.0)(distance, image)
    assert actual.shape == (3, 1, *image)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_blur_preserves_a_constant_map() -> None:
    constant = torch.full((1, 1, 8, 8), 2.5)
    torch.testing.assert_close(AnomalyMapGenerator(4.0)(constant, (40, 40)), torch.full((1, 1, 40, 40), 2.5))


def test_bad_sigma_and_tiny_images_are_errors() -> None:
    with pytest.raises(ValueError, match="sigma"):
        AnomalyMapGenerator(0.0)
    with pytest.raises(ValueError, match="too small"):
        AnomalyMapGenerator(4.0)(torch.rand(1, 1, 4, 4), (10, 10))
