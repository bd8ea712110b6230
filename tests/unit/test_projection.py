"""Channel reduction by a seeded semi-orthogonal projection of all channels (Kim et al. 2021)."""

from __future__ import annotations

import pytest
import torch

from padim_plugin import StreamingPadimModel
from padim_plugin.torch_model import semi_orthogonal_projection


def test_the_projection_has_orthonormal_columns_and_is_seeded() -> None:
    projection = semi_orthogonal_projection(176, 100, seed=3).double()
    torch.testing.assert_close(projection.T @ projection, torch.eye(100, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert torch.equal(projection, semi_orthogonal_projection(176, 100, seed=3).double())
    assert not torch.allclose(projection, semi_orthogonal_projection(176, 100, seed=4).double())


@pytest.mark.parametrize("align_maps", [False, True], ids=["paper geometry", "aligned"])
def test_a_projected_embedding_is_every_channel_of_the_full_embedding_projected(align_maps: bool) -> None:
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    projected = StreamingPadimModel(n_features=20, channel_reduction="projection", align_maps=align_maps)
    every_channel = StreamingPadimModel(n_features=None, align_maps=align_maps)  # the subset of all
    full = every_channel.embed(images)
    expected = torch.einsum("bchw,ck->bkhw", full, projected.projection)
    actual = projected.embed(images)
    assert actual.shape == (2, 20, 24, 24)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_unknown_channel_reductions_are_refused_by_value() -> None:
    with pytest.raises(ValueError, match="'pca'"):
        StreamingPadimModel(n_features=8, weights=None, channel_reduction="pca")
