"""Aligned maps: the geometry helpers, and a synthetic defect's map landing on the defect."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from padim_plugin import StreamingPadimModel
from padim_plugin.alignment import cell_offsets, linear_from_centres, nearest_cells

SIZE = 256
# centres of 16 px squares, away from the borders; 0.5 px above-left of the pixel named, since a
# square of rows r-8 .. r+7 is centred on r - 0.5
PLACES = [(row, column) for row in (80, 128, 176) for column in (80, 128, 176)]


@pytest.mark.parametrize(("n_in", "n_out"), [(64, 256), (7, 28), (10, 25)])
def test_centres_at_half_a_stride_give_the_papers_bilinear_upsampling(n_in: int, n_out: int) -> None:
    stride = n_out / n_in
    expected = F.interpolate(torch.eye(n_in, dtype=torch.float64).unsqueeze(1), size=n_out, mode="linear",
                             align_corners=False).squeeze(1).T
    actual = linear_from_centres(n_in, n_out, (stride - 1) / 2, torch.float64)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_a_cell_centred_on_a_pixel_gives_that_pixel_its_value_alone() -> None:
    operator = linear_from_centres(4, 16, 1.0, torch.float64)  # cells centred on pixels 1, 5, 9, 13
    assert operator[5].tolist() == [0, 1, 0, 0]
    assert operator[7].tolist() == [0, 0.5, 0.5, 0]
    assert operator[0].tolist() == [1, 0, 0, 0]  # above the first centre: the border cell holds
    assert operator[15].tolist() == [0, 0, 0, 1]
    assert linear_from_centres(4, 16, -1.0, torch.float64)[0].tolist() == [0.75, 0.25, 0, 0]


def test_each_cell_takes_the_deeper_cell_with_the_nearest_centre() -> None:
    # cells at 4i - 1 (i = 0..7): -1, 3, 7, ..., 27; deeper cells at 16k - 4 (k = 0, 1): -4, 12
    assert nearest_cells(8, 4, -1.0, 16, -4.0, 2) == [0, 0, 1, 1, 1, 1, 1, 1]
    # the paper's repetition is the same with both grids centred on their blocks
    assert nearest_cells(8, 4, 1.5, 16, 7.5, 2) == [0, 0, 0, 0, 1, 1, 1, 1]


def smooth_texture(count: int, generator: torch.Generator) -> torch.Tensor:
    return 0.4 + 0.3 * F.interpolate(torch.rand(count, 3, 32, 32, generator=generator), size=(SIZE, SIZE),
                                     mode="bilinear")


def noise_texture(count: int, generator: torch.Generator) -> torch.Tensor:
    return 0.2 + 0.2 * torch.rand(count, 3, SIZE, SIZE, generator=generator)


def centre_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 2) row and column of the mass each map has above half its peak (over its
    median): the blob a reader sees."""
    maps = maps.double()
    excess = (maps - maps.flatten(1).median(dim=1).values[:, None, None]).clamp_min(0)
    weight = torch.where(excess > 0.5 * excess.amax(dim=(1, 2), keepdim=True), excess, 0.0)
    pixels = torch.arange(maps.shape[-1], dtype=torch.float64)
    rows = (weight.sum(dim=2) * pixels).sum(dim=1)
    columns = (weight.sum(dim=1) * pixels).sum(dim=1)
    return torch.stack([rows, columns], dim=1) / weight.sum(dim=(1, 2))[:, None]


def defect_offsets(model: StreamingPadimModel, texture, generator: torch.Generator) -> torch.Tensor:
    """(defects, 2): where each defect's map has its centre of mass, minus the defect's centre."""
    images = texture(len(PLACES), generator)
    for image, (row, column) in zip(images, PLACES, strict=True):
        image[:, row - 8 : row + 8, column - 8 : column + 8] = 0.9
    with torch.no_grad():
        maps = model(images).anomaly_map[:, 0]
    return centre_of_mass(maps) - (torch.tensor(PLACES, dtype=torch.float64) - 0.5)


@pytest.mark.parametrize("texture", [smooth_texture, noise_texture], ids=["smooth", "noise"])
def test_an_aligned_map_puts_synthetic_defects_within_a_pixel_of_their_centre(texture) -> None:
    generator = torch.Generator().manual_seed(7)
    normal = texture(24, generator)
    aligned = StreamingPadimModel(n_features=100, align_maps=True).fit(normal.split(8)).eval()
    offsets = defect_offsets(aligned, texture, torch.Generator().manual_seed(8))
    assert offsets.mean(dim=0).norm() <= 1.0, offsets
    assert offsets.norm(dim=1).max() <= 3.0, offsets  # no defect's blob far off either
    paper = StreamingPadimModel(n_features=100).fit(normal.split(8)).eval()
    assert (defect_offsets(paper, texture, torch.Generator().manual_seed(8)).mean(dim=0) > 6).all()


def test_measured_centres_travel_in_the_state_dict() -> None:
    model = StreamingPadimModel(n_features=8, align_maps=True)
    offsets = model.measured_cell_offsets()
    assert offsets.shape == (3, 2) and (offsets.abs() < 16).all()  # within a deep cell of i * stride
    restored = StreamingPadimModel(n_features=8, weights=None, align_maps=True)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.cell_offsets, offsets, rtol=0, atol=0)  # not re-measured


def test_offsets_kept_for_one_backbone_are_never_handed_to_another() -> None:
    imagenet = StreamingPadimModel(n_features=8, align_maps=True)
    imagenet.measured_cell_offsets()  # kept for this process
    random = StreamingPadimModel(n_features=8, weights=None, align_maps=True)
    for model in (StreamingPadimModel(n_features=8, align_maps=True), random):
        fresh = cell_offsets(model.feature_extractor, model.strides)
        torch.testing.assert_close(model.measured_cell_offsets(), fresh, rtol=0, atol=0)
    assert not torch.equal(random.cell_offsets, imagenet.cell_offsets)


def test_the_papers_model_has_no_offsets_to_measure() -> None:
    model = StreamingPadimModel(n_features=8)
    assert model.measured_cell_offsets() is None
    assert model.cell_offsets.numel() == 0
