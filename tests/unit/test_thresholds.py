"""Thresholds come from validation only: the rules, and proof that test images cannot move them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score

from flows.model.evaluate import image_metrics
from flows.model.fit import fit_line
from flows.model.thresholds import choose_threshold, f1_optimal_threshold

from ..fits import TINY
from ..synthetic import write_mvtec_folder

PARAMS = TINY


def test_f1_optimal_threshold_reaches_the_best_f1_of_any_cut() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + 1.2 * labels, 1)  # rounded: many ties
    threshold = f1_optimal_threshold(labels, scores)
    best = max(f1_score(labels, scores >= cut) for cut in np.unique(scores))
    assert f1_score(labels, scores > threshold) == pytest.approx(best)
    assert threshold not in scores, "the threshold falls between two scores, not on one"


def test_the_threshold_separates_the_scores_in_the_models_float32_too() -> None:
    # F1 is best with every image flagged: the cut must stay below the lowest score in float32
    labels, scores = np.array([1, 0, 1, 1]), np.array([5.0, 4.0, 3.0, 2.0], dtype=np.float32)
    threshold = np.float32(f1_optimal_threshold(labels, scores))
    assert (scores > threshold).all()
    close = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2))], dtype=np.float32)
    assert np.float32(f1_optimal_threshold(np.array([0, 1]), close)) == close[0]  # no float32 between


def test_validation_without_defects_takes_the_normal_quantile() -> None:
    scores = np.arange(1000, dtype=float)
    threshold, rule = choose_threshold(np.zeros(1000), scores, 0.99, "images")
    assert threshold == pytest.approx(989.01) and rule == "quantile 0.99 of 1000 normal validation images"
    assert image_metrics(np.zeros(1000), scores, threshold)["test_normal_fpr"] == pytest.approx(0.01)


def calibrated(line: Path, work: Path) -> tuple[object, dict[str, torch.Tensor]]:
    model, calibration = fit_line(PARAMS, line, work)
    return calibration, {name: buffer.clone() for name, buffer in model.post_processor.named_buffers()}


@pytest.mark.parametrize("change", ["perturb", "drop"])
def test_test_images_cannot_move_the_threshold(tmp_path: Path, change: str) -> None:
    line = write_mvtec_folder(tmp_path / "line", 10, 6, 6, n_validation=4)
    reference = calibrated(line, tmp_path / "work_a")
    changed = tmp_path / "changed"
    shutil.copytree(line, changed)
    tests = sorted((changed / "test").rglob("*.png"))
    if change == "perturb":
        rng = np.random.default_rng(1)
        for image in tests:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    else:
        for image in tests[1:]:
            image.unlink()
    calibration, buffers = calibrated(changed, tmp_path / "work_b")
    assert calibration == reference[0]
    for name, buffer in buffers.items():
        assert torch.equal(buffer, reference[1][name]), name


def test_an_images_score_does_not_depend_on_its_batch_neighbours(tmp_path: Path) -> None:
    from flows.model.predictions import predict_role

    line = write_mvtec_folder(tmp_path / "line", 10, 4, 4, n_validation=3)
    for index, image in enumerate(sorted((line / "test").rglob("*.png"))):  # cameras of several sizes
        Image.open(image).resize((64 + 24 * (index % 3), 48 + 40 * (index % 2))).save(image)
    model, _ = fit_line(PARAMS, line, tmp_path / "work")
    scores = {}
    for batch_size in (1, 8):
        data = PARAMS.data.model_copy(update={"eval_batch_size": batch_size})
        params = PARAMS.model_copy(update={"data": data})
        predictions = predict_role(model, params, line, "test", tmp_path / "work")
        scores[batch_size] = dict(zip(predictions.image_paths, predictions.scores, strict=True))
    assert scores[1].keys() == scores[8].keys()
    for path, score in scores[1].items():
        assert score == pytest.approx(scores[8][path], rel=1e-5), path
