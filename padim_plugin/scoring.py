"""Score images with a fitted StreamingPadim: the whole anomalib pipeline in one call.

``score_arrays``: uint8 images (N, H, W, 3) RGB, or (N, H, W) grey. Output: ``pred_score`` (N,)
normalised so that the model's threshold sits at 0.5, ``pred_label`` (N,) 0/1, and ``anomaly_map``
(N, H, W) at the inputs' size, normalised so that the pixel threshold sits at 0.5, within 0..1.

``score_images``: decoded images (``decode_payload`` turns what a REST client sends, pixels or
base64-encoded images, possibly of several sizes, into them), one batch per size. Its reply is
compact unless the map is asked for: ``pred_score`` and ``pred_label`` only (a few dozen bytes per
image, where a 256 px map as JSON is about 1 MB); ``anomaly_map="values"`` adds ``anomaly_map``,
``"png"`` adds ``anomaly_map_png`` (each map as a base64 8-bit grey PNG, value x 255: the pixel
threshold at 128), either at most ``map_size`` px on its longer side if given (area-averaged), else
at its image's size. ``score_payload`` decodes and scores in one call, maps included unless told
otherwise. Used by the MLflow pyfunc; needs no MLOps package.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import Resize

from .images import ImageDecodeError, decode_bytes, encode_png

# how a REST reply carries each image's anomaly map: not at all (the default), as values, or as PNG
MAP_FORMATS = ("none", "values", "png")


def indices_by_shape(shapes: list[tuple[int, ...]]) -> dict[tuple[int, ...], list[int]]:
    """Positions of the images of each shape, in first-seen order: one model call per shape."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    return groups


def image_size(model: torch.nn.Module) -> tuple[int, int]:
    """The (height, width) the model's pre-processor resizes to."""
    transform = getattr(model.pre_processor, "transform", None)
    resize = next((t for t in getattr(transform, "transforms", [transform]) if isinstance(t, Resize)), None)
    if resize is None or not isinstance(resize.size, list | tuple):
        raise ValueError("the model's pre-processor has no fixed-size Resize: pass an input size")
    height, width = (resize.size * 2)[:2] if len(resize.size) == 1 else resize.size
    return int(height), int(width)


def raw_image_threshold(model: torch.nn.Module) -> float:
    """The image threshold in raw score units, as the model's post-processor holds it."""
    return float(model.post_processor._image_threshold)  # anomalib keeps it private


def raw_pixel_threshold(model: torch.nn.Module) -> float:
    """The pixel threshold in raw anomaly-map units."""
    return float(model.post_processor._pixel_threshold)  # anomalib keeps it private


def score_arrays(model: torch.nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run the full anomalib pipeline (pre-processor, model, post-processor) on a batch."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W), got shape {array.shape}")
    batch = torch.from_numpy(np.array(array)).permute(0, 3, 1, 2).float()  # a writable copy
    if array.dtype == np.uint8:
        batch = batch / 255.0
    batch = batch.expand(-1, 3, -1, -1)
    with torch.no_grad():
        output = model(batch)
    anomaly_map = output.anomaly_map.float()
    if anomaly_map.shape[-2:] != array.shape[1:3]:
        anomaly_map = F.interpolate(anomaly_map, size=array.shape[1:3], mode="bilinear", align_corners=False)
    return {
        "pred_score": output.pred_score.flatten().float().numpy(),
        "pred_label": output.pred_label.flatten().to(torch.int64).numpy(),
        "anomaly_map": anomaly_map[:, 0].numpy(),
    }


def decode_payload(payload: object) -> list[np.ndarray]:
    """Images as a REST client sends them: an integer array (N, H, W, 3) or (N, H, W) of 0..255,
    or encoded images (base64 text or bytes of PNG, JPEG, ...) in an ``image`` column or key, or
    as an array of strings. Returns uint8 arrays; bad items raise ImageDecodeError naming them."""
    import binascii

    import pandas as pd

    if isinstance(payload, pd.DataFrame):
        payload = payload["image"].tolist() if "image" in payload else payload.to_numpy()
    elif isinstance(payload, dict):
        if "image" not in payload:
            raise ValueError(f"expected an 'image' entry of encoded images, got keys {sorted(payload)}")
        payload = payload["image"]
    array = np.asarray(payload)
    if array.size == 0:
        raise ValueError("no images in the request")
    if array.dtype.kind in "iu" and array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(f"pixels of shape {array.shape} look like one image: send a batch (1, H, W, 3)")
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"pixel values must be 0..255, got {array.min()}..{array.max()}")
        return list(array.astype(np.uint8))
    if array.dtype.kind not in "USO":
        raise ValueError(f"send uint8 pixels (0..255) or encoded images, not {array.dtype} values")
    images = []
    for index, item in enumerate(array.reshape(-1).tolist()):
        name = f"image {index}"
        text = "".join(str(item).split()) if not isinstance(item, bytes) else ""
        text = text.split("base64,", 1)[1] if text.startswith("data:") and "base64," in text else text
        try:
            data = item if isinstance(item, bytes) else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ImageDecodeError(f"{name}: not base64 text") from None
        images.append(decode_bytes(data, name))
    return images


def score_payload(model: torch.nn.Module, payload: object, anomaly_map: str = "values",
                  map_size: int | None = None) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Score a REST payload (see :func:`decode_payload`): a score and a label per image, and the
    maps as ``anomaly_map`` asks (module docstring). The maps come as values unless told otherwise,
    as they always did: the pyfunc of a version registered before compact replies calls this."""
    check_map_request(anomaly_map, map_size)
    return score_images(model, decode_payload(payload), anomaly_map, map_size)


def check_map_request(anomaly_map: str, map_size: int | None) -> None:
    """Refuse, naming the value, a map format or size that :func:`score_images` cannot give."""
    if anomaly_map not in MAP_FORMATS:
        raise ValueError(f"anomaly_map must be one of {', '.join(MAP_FORMATS)}; got {anomaly_map!r}")
    if map_size is not None and (not isinstance(map_size, int) or map_size < 1):
        raise ValueError(f"map_size must be a whole number of pixels >= 1, got {map_size!r}")


def score_images(model: torch.nn.Module, images: list[np.ndarray], anomaly_map: str = "none",
                 map_size: int | None = None) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Decoded uint8 images scored as :func:`score_payload` replies. Images of one size share a
    batch; maps of several sizes come back as a list."""
    scores, labels = np.zeros(len(images), np.float32), np.zeros(len(images), np.int64)
    maps: list[np.ndarray] = [np.empty(0)] * len(images)
    for indices in indices_by_shape([image.shape for image in images]).values():
        output = score_arrays(model, np.stack([images[i] for i in indices]))
        scores[indices], labels[indices] = output["pred_score"], output["pred_label"]
        for position, index in enumerate(indices):
            maps[index] = output["anomaly_map"][position]
    reply: dict[str, np.ndarray | list[np.ndarray]] = {"pred_score": scores, "pred_label": labels}
    if anomaly_map == "none":
        return reply
    maps = [shrunk_map(m, map_size) for m in maps]
    if anomaly_map == "png":
        reply["anomaly_map_png"] = np.array([map_png(m) for m in maps])
    else:
        reply["anomaly_map"] = np.stack(maps) if len({m.shape for m in maps}) == 1 else maps
    return reply


def shrunk_map(anomaly_map: np.ndarray, map_size: int | None) -> np.ndarray:
    """The map at most ``map_size`` px on its longer side, each pixel the mean of those it covers."""
    height, width = anomaly_map.shape
    if map_size is None or max(height, width) <= map_size:
        return anomaly_map
    scale = map_size / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.adaptive_avg_pool2d(torch.from_numpy(anomaly_map)[None, None], size)[0, 0].numpy()


def map_png(anomaly_map: np.ndarray) -> str:
    """A normalised map (0..1) as base64 8-bit grey PNG, value x 255 rounded."""
    grey = np.rint(np.clip(anomaly_map, 0, 1) * 255).astype(np.uint8)
    return base64.b64encode(encode_png(grey)).decode("ascii")
