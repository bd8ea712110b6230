"""A REST payload's reply: scores and labels, and the anomaly maps only when they are asked for."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from padim_plugin.scoring import score_arrays, score_images, score_payload

from ..fits import Fit


def test_a_reply_carries_a_score_and_a_label_per_image_and_no_map_unless_asked(tiny_fit: Fit) -> None:
    images = tiny_fit.pixels[:3]
    reply = score_images(tiny_fit.model, list(images))
    assert set(reply) == {"pred_score", "pred_label"}
    expected = score_arrays(tiny_fit.model, images)
    np.testing.assert_allclose(reply["pred_score"], expected["pred_score"], rtol=1e-6)
    assert reply["pred_label"].tolist() == expected["pred_label"].tolist()


def test_a_payload_scored_in_one_call_keeps_its_maps_as_older_registered_pyfuncs_expect(
        tiny_fit: Fit) -> None:
    images = tiny_fit.pixels[:2]
    reply = score_payload(tiny_fit.model, images.astype(np.int64))  # what the earlier pyfunc.py calls
    np.testing.assert_allclose(reply["anomaly_map"], score_arrays(tiny_fit.model, images)["anomaly_map"],
                               rtol=1e-6)


def test_a_map_asked_for_as_values_is_the_full_map_or_its_block_means_at_map_size(tiny_fit: Fit) -> None:
    images = tiny_fit.pixels[:2]  # 64 x 64
    full = score_arrays(tiny_fit.model, images)["anomaly_map"]
    reply = score_payload(tiny_fit.model, images.astype(np.int64), anomaly_map="values")
    np.testing.assert_allclose(reply["anomaly_map"], full, rtol=1e-6)
    small = score_payload(tiny_fit.model, images.astype(np.int64), anomaly_map="values", map_size=16)
    blocks = full.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4))  # each pixel the mean of a 4 x 4 block
    np.testing.assert_allclose(small["anomaly_map"], blocks, rtol=1e-5, atol=1e-7)


def test_a_map_asked_for_as_png_decodes_to_its_values_times_255(tiny_fit: Fit) -> None:
    images = tiny_fit.pixels[:2]
    full = score_arrays(tiny_fit.model, images)["anomaly_map"]
    reply = score_payload(tiny_fit.model, images.astype(np.int64), anomaly_map="png")
    assert "anomaly_map" not in reply and len(reply["anomaly_map_png"]) == 2
    for encoded, values in zip(reply["anomaly_map_png"], full, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
        assert decoded.dtype == np.uint8 and decoded.shape == values.shape
        assert np.abs(decoded.astype(int) - np.rint(values * 255)).max() <= 1  # float32 rounding at .5


@pytest.mark.parametrize(("options", "words"), [
    ({"anomaly_map": "jpeg"}, "anomaly_map must be one of none, values, png; got 'jpeg'"),
    ({"anomaly_map": "values", "map_size": 0}, "map_size must be a whole number of pixels >= 1, got 0"),
], ids=["unknown map format", "map size 0"])
def test_a_bad_map_request_is_refused_naming_the_value(tiny_fit: Fit, options: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        score_payload(tiny_fit.model, tiny_fit.pixels[:1].astype(np.int64), **options)
