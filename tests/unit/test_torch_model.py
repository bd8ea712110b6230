"""StreamingPadimModel against anomalib's own PadimModel, and its handling of bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from PIL import Image
from sklearn.metrics import roc_auc_score

from padim_plugin import NotFittedError, StreamingPadimModel
from padim_plugin.mvtec import mvtec_samples

from ..mtd import MTD

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def load(paths: list[str], size: int, mask: bool = False) -> torch.Tensor:
    images = []
    for path in paths:
        if not path:
            images.append(torch.zeros(1, size, size))
            continue
        image = Image.open(path).convert("L" if mask else "RGB")
        resample = Image.NEAREST if mask else Image.BILINEAR
        array = np.asarray(image.resize((size, size), resample), dtype=np.float32) / 255
        tensor = torch.from_numpy(array)
        images.append((tensor[None] > 0.5).float() if mask else tensor.permute(2, 0, 1))
    stacked = torch.stack(images)
    return stacked if mask else (stacked - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def mtd_subset() -> dict[str, torch.Tensor]:
    """96 normal training images and 96 test images (half defective) of the real MTD set, 128 px."""
    if not MTD.is_dir():
        pytest.skip(f"real data set not found at {MTD}")
    train = mvtec_samples(MTD, "train").iloc[::7].head(96)
    test = mvtec_samples(MTD, "test")
    normal, defective = test[test.label_index == 0], test[test.label_index == 1]
    test = pd.concat([normal.iloc[::3].head(48), defective.iloc[::8].head(48)])
    return {
        "train": load(list(train.image_path), 128),
        "test": load(list(test.image_path), 128),
        "labels": torch.tensor(test.label_index.to_numpy()),
        "masks": load(list(test.mask_path), 128, mask=True),
    }


def anomalib_twin(ours: StreamingPadimModel) -> PadimModel:
    """anomalib's PadimModel with our backbone weights and our channel subset copied in."""
    reference = PadimModel(backbone=ours.backbone, layers=ours.layers, pre_trained=False,
                           n_features=ours.n_features)
    reference.feature_extractor.feature_extractor.load_state_dict(ours.feature_extractor.state_dict())
    reference.idx = ours.channel_index.clone()
    return reference


def test_outputs_equal_anomalib_padim_on_real_images(mtd_subset: dict[str, torch.Tensor]) -> None:
    # anomalib adds 1e-5 * I on top of the paper's 0.01 * I; give ours the same regulariser
    ours = StreamingPadimModel(n_features=100, epsilon=0.01 + 1e-5)
    reference = anomalib_twin(ours)
    train_batches = mtd_subset["train"].split(32)
    ours.fit(train_batches)
    reference.train()
    with torch.no_grad():
        for batch in train_batches:
            reference(batch)
    reference.fit()
    ours.eval()
    reference.eval()
    with torch.no_grad():
        mine = [ours(batch) for batch in mtd_subset["test"].split(32)]
        theirs = [reference(batch) for batch in mtd_subset["test"].split(32)]
    our_maps = torch.cat([m.anomaly_map for m in mine])
    their_maps = torch.cat([t.anomaly_map for t in theirs])
    assert float((our_maps - their_maps).norm() / their_maps.norm()) < 1e-4
    torch.testing.assert_close(our_maps, their_maps, rtol=1e-3, atol=1e-3)  # no outlier pixel either

    labels, masks = mtd_subset["labels"], mtd_subset["masks"]
    our_scores = torch.cat([m.pred_score for m in mine]).flatten()
    their_scores = torch.cat([t.pred_score for t in theirs]).flatten()
    image_auroc = [roc_auc_score(labels, scores) for scores in (our_scores, their_scores)]
    pixel_auroc = [roc_auc_score(masks.flatten(), maps.flatten()) for maps in (our_maps, their_maps)]
    assert abs(image_auroc[0] - image_auroc[1]) <= 0.002, image_auroc
    assert abs(pixel_auroc[0] - pixel_auroc[1]) <= 0.002, pixel_auroc
    assert image_auroc[0] > 0.6, "a fitted PaDiM must tell MTD defects from normal tiles"


@pytest.fixture(scope="module")
def fitted() -> StreamingPadimModel:
    model = StreamingPadimModel(n_features=20)
    generator = torch.Generator().manual_seed(0)
    model.fit(torch.randn(12, 3, 64, 64, generator=generator).split(4))
    return model.eval()


def test_channel_subset_is_seeded() -> None:
    a, b, c = (StreamingPadimModel(n_features=30, seed=s, weights=None) for s in (1, 1, 2))
    assert torch.equal(a.channel_index, b.channel_index)
    assert not torch.equal(a.channel_index, c.channel_index)
    assert a.channel_index.tolist() == sorted(set(a.channel_index.tolist()))
    with pytest.raises(ValueError, match="n_features must be in 1..176"):
        StreamingPadimModel(n_features=500, weights=None)


def test_grey_and_rgba_images_are_accepted(fitted: StreamingPadimModel) -> None:
    grey = torch.randn(2, 1, 64, 64)
    rgb = fitted(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(fitted(grey).anomaly_map, rgb.anomaly_map)
    rgba = torch.cat([grey.expand(-1, 3, -1, -1), torch.ones(2, 1, 64, 64)], dim=1)
    torch.testing.assert_close(fitted(rgba).pred_score, rgb.pred_score)
    with pytest.raises(ValueError, match="1, 3 or 4 channels, got 2"):
        fitted(torch.randn(2, 2, 64, 64))


def test_images_of_another_size_than_the_fit_are_an_error(fitted: StreamingPadimModel) -> None:
    with pytest.raises(ValueError, match=r"resize them to the training size"):
        fitted(torch.randn(1, 3, 96, 96))


def test_scoring_before_fit_is_an_error() -> None:
    model = StreamingPadimModel(weights=None).eval()
    with pytest.raises(NotFittedError, match="not fitted"):
        model(torch.randn(1, 3, 64, 64))


def test_empty_training_set_and_single_image_are_errors() -> None:
    model = StreamingPadimModel(weights=None)
    with pytest.raises(ValueError, match="training set is empty"):
        model.fit([])
    with pytest.raises(ValueError, match="at least 2 training images, got 1"):
        model.fit([torch.randn(1, 3, 64, 64)])


def test_non_finite_features_name_the_batch() -> None:
    model = StreamingPadimModel(weights=None)
    bad = torch.randn(2, 3, 64, 64)
    bad[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="training batch 1: embeddings contain NaN"):
        model.fit([torch.randn(2, 3, 64, 64), bad])


def test_top_k_image_score_is_the_mean_of_the_highest_map_pixels(fitted: StreamingPadimModel) -> None:
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = fitted(images)
    pixels = np.sort(result.anomaly_map.flatten(1).double().numpy(), axis=1)[:, ::-1]
    np.testing.assert_allclose(result.pred_score.flatten().numpy(), pixels[:, 0], rtol=1e-6)  # the paper
    fitted.top_k_percent = 1.0
    try:
        top = fitted(images).pred_score.flatten().numpy()
    finally:
        fitted.top_k_percent = None
    k = int(np.ceil(64 * 64 * 0.01))  # 41 pixels
    np.testing.assert_allclose(top, pixels[:, :k].mean(axis=1), rtol=1e-5)
    assert (top < pixels[:, 0]).all()
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match=r"top_k_percent must be in \(0, 100\]"):
            StreamingPadimModel(weights=None, top_k_percent=bad)


def test_state_dict_round_trip_gives_the_same_scores(fitted: StreamingPadimModel) -> None:
    restored = StreamingPadimModel(n_features=20, seed=99)  # another subset: the saved one wins
    restored.load_state_dict(fitted.state_dict())
    restored.eval()
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(restored(images).anomaly_map, fitted(images).anomaly_map)


def test_training_mode_leaves_the_pretrained_backbone_untouched() -> None:
    model = StreamingPadimModel(n_features=10)
    before = {k: v.clone() for k, v in model.feature_extractor.state_dict().items()}
    model.train()
    assert not model.feature_extractor.training
    model(torch.randn(4, 3, 64, 64))  # train-mode forward folds the batch into the statistics
    assert model.gaussian.n_samples == 4
    for key, value in model.feature_extractor.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: BatchNorm must keep ImageNet's statistics"
