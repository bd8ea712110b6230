"""Pixel metrics from the part of the curve they need (flows.model.curves) equal the full ones:
anomalib's AUPRO and scikit-learn's ROC area."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.metrics.aupro import _AUPRO
from sklearn.metrics import roc_auc_score

from flows.model.curves import AUPRO, auroc


def maps_and_masks(seed: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps quantised to ``levels`` values (ties across regions and background), with 0-3 defect
    rectangles per image scored higher on average, and one image without any."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(6, 48, 48, dtype=torch.int)
    for image in range(1, 6):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            top, left = torch.randint(0, 40, (2,), generator=generator).tolist()
            height, width = torch.randint(2, 9, (2,), generator=generator).tolist()
            masks[image, top : top + height, left : left + width] = 1
    maps = torch.rand(masks.shape, generator=generator) + 0.7 * masks
    return (maps * levels).floor() / levels, masks


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("levels", [7, 1000, 10**7])
def test_aupro_equals_anomalibs(fpr_limit: float, levels: int) -> None:
    maps, masks = maps_and_masks(seed=levels, levels=levels)
    ours, reference = AUPRO(fpr_limit=fpr_limit), _AUPRO(fpr_limit=fpr_limit)
    for metric in (ours, reference):
        metric.update(maps, masks)
    assert float(ours.compute()) == pytest.approx(float(reference.compute()), rel=1e-6, abs=1e-7)


def test_aupro_of_masks_without_defects_is_zero_as_anomalibs() -> None:
    maps, masks = maps_and_masks(seed=0, levels=1000)
    ours, reference = AUPRO(fpr_limit=0.3), _AUPRO(fpr_limit=0.3)
    for metric in (ours, reference):
        metric.update(maps, torch.zeros_like(masks))
    assert float(ours.compute()) == float(reference.compute()) == 0.0


@pytest.mark.parametrize("levels", [3, 50, 10**6])
def test_auroc_equals_scikit_learns_with_and_without_ties(levels: int) -> None:
    generator = np.random.default_rng(levels)
    labels = generator.random(20_000) < 0.2
    scores = np.floor((generator.random(20_000) + 0.4 * labels) * levels).astype(np.float32)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        auroc(np.zeros(5, dtype=bool), np.arange(5.0))
