"""The model artifact is data: safetensors + manifest, rebuilt from the manifest, never executed."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.model.build import save_model
from padim_plugin.artifact import MANIFEST, TENSORS, ArtifactError, load_artifact
from padim_plugin.scoring import raw_image_threshold, score_arrays

from ..fits import TINY, Fit


@pytest.fixture(scope="module")
def fitted(tiny_fit: Fit, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("artifact") / "model"
    save_model(tiny_fit.model, TINY, folder, data_md5="abc.dir")
    return tiny_fit.model, folder, tiny_fit.pixels


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_a_loaded_artifact_scores_exactly_as_the_fitted_model(fitted: tuple, tmp_path: Path) -> None:
    model, folder, images = fitted
    assert {p.name for p in folder.iterdir()} == {MANIFEST, TENSORS}
    loaded = load_artifact(folder)
    expected, actual = score_arrays(model, images), score_arrays(loaded, images)
    for key in ("pred_score", "pred_label", "anomaly_map"):
        assert np.array_equal(expected[key], actual[key]), key
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["image_size"] == 64
    assert manifest["metadata"] == {"line": "line", "data_md5": "abc.dir"}
    assert manifest["thresholds"]["_image_threshold"] == raw_image_threshold(model)


def test_the_image_score_rule_travels_with_the_artifact(fitted: tuple, tmp_path: Path) -> None:
    model, folder, images = fitted
    model.model.top_k_percent = 2.0
    try:
        loaded = load_artifact(save_model(model, TINY, tmp_path / "top_k"))
        assert loaded.model.top_k_percent == 2.0
        np.testing.assert_array_equal(score_arrays(loaded, images)["pred_score"],
                                      score_arrays(model, images)["pred_score"])
    finally:
        model.model.top_k_percent = None
    assert load_artifact(folder).model.top_k_percent is None


def test_accuracy_options_travel_with_the_artifact(tiny_fit_with_options: Fit, tmp_path: Path) -> None:
    """Projection, measured cell centres and pooling are restored from the artifact, not re-made."""
    model = tiny_fit_with_options.model
    loaded = load_artifact(save_model(model, tiny_fit_with_options.params, tmp_path / "model"))
    core = loaded.model
    assert (core.align_maps, core.channel_reduction, core.pooling) == (True, "projection", "neighbourhood")
    assert torch.equal(core.projection, model.model.projection)
    assert torch.equal(core.cell_offsets, model.model.cell_offsets)
    images = tiny_fit_with_options.pixels
    expected, actual = score_arrays(model, images), score_arrays(loaded, images)
    for key in ("pred_score", "pred_label", "anomaly_map"):
        assert np.array_equal(expected[key], actual[key]), key


def test_only_the_triangle_of_the_whitening_factor_is_stored(fitted: tuple) -> None:
    from safetensors import safe_open

    model, folder, _ = fitted
    positions, channels, _ = model.model.whitening.shape
    with safe_open(folder / TENSORS, "pt") as tensors:
        packed = tensors.get_slice("whitening_packed").get_shape()
        assert packed == [positions, channels * (channels + 1) // 2]
        assert "whitening" not in tensors.keys()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_damaged_tensors_are_refused_by_name(fitted: tuple, tmp_path: Path, damage: str) -> None:
    folder = copy_of(fitted[1], tmp_path)
    data = (folder / TENSORS).read_bytes()
    if damage == "flip a byte":
        (folder / TENSORS).write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "truncate":
        (folder / TENSORS).write_bytes(data[: len(data) // 2])
    else:
        (folder / TENSORS).unlink()
    with pytest.raises(ArtifactError, match=str(folder / TENSORS)):
        load_artifact(folder)


def test_tampered_or_incompatible_manifests_are_refused(fitted: tuple, tmp_path: Path) -> None:
    folder = copy_of(fitted[1], tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    for change, words in (({"format_version": 99}, "format version 99"), ({"format": "other"}, "not a"),
                          ({"backbone": "resnet18"}, "cannot be built"),
                          ({"n_features": 9}, "channel_index is not 9 distinct channels"),
                          ({"backbone": "hf-hub:someone/model"}, "is not a timm model name")):
        (folder / MANIFEST).write_text(json.dumps(manifest | change))
        with pytest.raises(ArtifactError, match=words):
            load_artifact(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(folder)


class Payload:
    """What an attacker with write access to the registry would plant: code run on unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_in_place_of_the_tensors_is_refused_and_never_runs(fitted: tuple, tmp_path: Path) -> None:
    import hashlib

    folder = copy_of(fitted[1], tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": Payload(marker)})
    (folder / TENSORS).write_bytes(payload)
    manifest = json.loads((folder / MANIFEST).read_text())  # the attacker fixes the checksum too
    manifest["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_artifact(folder)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is real: unpickling it does run the code
    assert marker.read_text() == "code ran"


def test_float16_storage_halves_the_tensors_and_scores_nearly_alike(fitted: tuple, tmp_path: Path) -> None:
    from padim_plugin.artifact import save_artifact

    model, folder, images = fitted
    half = save_artifact(model, tmp_path / "half", 64, dtype="float16")
    ratio = (half / TENSORS).stat().st_size / (folder / TENSORS).stat().st_size
    assert 0.49 < ratio < 0.52
    full_scores = score_arrays(load_artifact(folder), images)
    half_scores = score_arrays(load_artifact(half), images)
    relative = np.linalg.norm(half_scores["anomaly_map"] - full_scores["anomaly_map"]) / np.linalg.norm(
        full_scores["anomaly_map"])
    assert 0 < relative < 1e-2
    with pytest.raises(ValueError, match="storage dtype"):
        save_artifact(model, tmp_path / "bad", 64, dtype="int8")


def test_payloads_of_pixels_or_encoded_images_score_alike_and_bad_items_are_named(fitted: tuple) -> None:
    import base64
    import io

    import pandas as pd

    from padim_plugin.images import ImageDecodeError
    from padim_plugin.scoring import score_payload

    model, _, images = fitted

    def png(image: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    expected = score_arrays(model, images[:2])
    for payload in (images[:2].astype(np.int64), {"image": [png(i) for i in images[:2]]},
                    pd.DataFrame({"image": [png(i) for i in images[:2]]})):
        answer = score_payload(model, payload)
        assert np.allclose(answer["pred_score"], expected["pred_score"], rtol=1e-6)
    mixed = score_payload(model, {"image": [png(images[0]), png(images[1][:40, :48])]})
    assert [m.shape for m in mixed["anomaly_map"]] == [(64, 64), (40, 48)]
    assert mixed["pred_score"][0] == pytest.approx(expected["pred_score"][0], rel=1e-5)  # alone, not in 2
    with pytest.raises(ImageDecodeError, match="image 1: not base64 text"):
        score_payload(model, {"image": [png(images[0]), "not base64!"]})
    with pytest.raises(ImageDecodeError, match="image 0: not an image"):
        score_payload(model, {"image": [base64.b64encode(b"hello").decode()]})
    with pytest.raises(ValueError, match="0..255"):
        score_payload(model, images[:1].astype(np.int64) * 2)
    with pytest.raises(ValueError, match="look like one image: send a batch"):
        score_payload(model, images[0].astype(np.int64))
    wrapped = base64.encodebytes(base64.b64decode(png(images[0]))).decode()  # line-wrapped, as MLflow's
    for text in (wrapped, f"data:image/png;base64,{png(images[0])}"):
        answer = score_payload(model, {"image": [text]})
        assert answer["pred_score"][0] == pytest.approx(expected["pred_score"][0], rel=1e-5)
