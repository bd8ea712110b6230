"""Kept validation and test features (flows.model.features): an evaluation from them equals a fresh
one, and the backbone runs only on the images whose maps are not kept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.model.build import build_model
from flows.model.evaluate import Evaluation, evaluate, evaluation_images
from flows.model.features import SUFFIX, KeptFeatures, image_digest
from flows.model.fit import fit_line

from ..fits import Fit, with_options
from ..synthetic import Synthetic, save

CODE = "code-under-test"


@contextmanager
def backbone_images(model: torch.nn.Module) -> Iterator[list[int]]:
    """The number of images each backbone call saw while the block runs."""
    seen: list[int] = []
    backbone = model.model.feature_extractor
    hook = backbone.register_forward_hook(lambda _, inputs, __: seen.append(len(inputs[0])))
    try:
        yield seen
    finally:
        hook.remove()


@pytest.fixture
def line(tiny_fit: Fit, tmp_path: Path) -> Path:
    """A copy of the tiny line, free to change."""
    return shutil.copytree(tiny_fit.line, tmp_path / "line")


def assert_same_evaluation(actual: Evaluation, expected: Evaluation) -> None:
    assert actual.image_paths == expected.image_paths
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=1e-5)
    assert actual.metrics.keys() == expected.metrics.keys()
    for name, value in expected.metrics.items():
        assert actual.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_an_evaluation_from_kept_features_equals_a_fresh_one_and_runs_no_backbone(
        tiny_fit: Fit, line: Path, tmp_path: Path) -> None:
    model, params = tiny_fit.model, tiny_fit.params
    fresh = evaluate(model, params, line, tmp_path / "fresh")
    kept = KeptFeatures(tmp_path, params.name, CODE)
    with backbone_images(model) as first:
        keeping = evaluate(model, params, line, tmp_path / "keeping", kept)
    with backbone_images(model) as second:
        from_kept = evaluate(model, params, line, tmp_path / "kept", kept)
    assert sum(first) == len(fresh.image_paths) and second == []
    assert_same_evaluation(keeping, fresh)
    assert_same_evaluation(from_kept, fresh)


def test_only_an_added_image_is_embedded_after_an_append(tiny_fit: Fit, line: Path, tmp_path: Path) -> None:
    model, params = tiny_fit.model, tiny_fit.params
    kept = KeptFeatures(tmp_path, params.name, CODE)
    evaluate(model, params, line, tmp_path / "before", kept)
    save(Synthetic(64, seed=11).normal(), line / "test" / "good" / "added.png")
    with backbone_images(model) as seen:
        after = evaluate(model, params, line, tmp_path / "after", kept)
    assert seen == [1]
    assert_same_evaluation(after, evaluate(model, params, line, tmp_path / "fresh"))


def test_a_calibration_from_kept_features_equals_a_fresh_one(tiny_fit: Fit, line: Path,
                                                             tmp_path: Path) -> None:
    params = tiny_fit.params
    kept = KeptFeatures(tmp_path, params.name, CODE)
    _, fresh = fit_line(params, line, tmp_path / "fresh")
    fit_line(params, line, tmp_path / "keeping", kept=kept)
    model, from_kept = fit_line(params, line, tmp_path / "kept", kept=kept)
    for name, value in fresh.as_params().items():
        assert from_kept.as_params()[name] == (pytest.approx(value, rel=1e-5) if isinstance(value, float)
                                               else value), name
    validation = list((line / "validation").rglob("*.png"))
    assert len(list(kept.for_model(model).folder.glob(f"*{SUFFIX}"))) == len(validation)


def test_an_unreadable_kept_file_is_embedded_again(tiny_fit: Fit, line: Path, tmp_path: Path) -> None:
    model, params = tiny_fit.model, tiny_fit.params
    kept = KeptFeatures(tmp_path, params.name, CODE)
    expected = evaluate(model, params, line, tmp_path / "keeping", kept)
    broken = sorted(kept.for_model(model).folder.glob(f"*{SUFFIX}"))[0]
    broken.write_bytes(b"not a safetensors file")
    with backbone_images(model) as seen:
        assert_same_evaluation(evaluate(model, params, line, tmp_path / "again", kept), expected)
    assert seen == [1] and broken.stat().st_size > 100


def test_a_new_channel_choice_reuses_the_kept_features_but_new_layers_or_code_do_not(
        tiny_fit: Fit, tmp_path: Path) -> None:
    """The maps depend on the backbone, its layers, the input and the code, not on which channels
    are kept."""
    kept = KeptFeatures(tmp_path, "line", CODE)
    config = kept.config(tiny_fit.model)
    reseeded = build_model(with_options(tiny_fit.params, {"seed": 5, "channel_reduction": "projection"}))
    deeper = build_model(with_options(tiny_fit.params, {"layers": ["blocks.2", "blocks.4", "blocks.6"]}))
    assert kept.config(reseeded) == config
    assert kept.config(deeper) != config
    assert KeptFeatures(tmp_path, "line", "other code").config(tiny_fit.model) != config


def test_garbage_collection_keeps_only_the_current_images_of_the_configs_in_use(
        tiny_fit: Fit, line: Path, tmp_path: Path) -> None:
    model, params = tiny_fit.model, tiny_fit.params
    kept = KeptFeatures(tmp_path, params.name, CODE)
    evaluate(model, params, line, tmp_path / "keeping", kept)
    old_config = KeptFeatures(tmp_path, params.name, "old code").for_model(model)
    old_config.keep("0" * 64, [torch.zeros(2, 4, 4)])
    removed = sorted((line / "test").rglob("*.png"))[0]
    removed.unlink()
    before = {path.name.removesuffix(SUFFIX) for path in kept.for_model(model).folder.iterdir()}
    n_bytes = kept.n_bytes()
    current = {image_digest(path) for path in evaluation_images(line)}
    freed = kept.collect_garbage({kept.config(model)}, current)
    left = {path.name.removesuffix(SUFFIX) for path in kept.folder.rglob(f"*{SUFFIX}")}
    assert left == before & current and len(left) == len(before) - 1
    assert not old_config.folder.exists() and freed == n_bytes - kept.n_bytes() > 0
