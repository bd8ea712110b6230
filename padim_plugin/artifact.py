"""A fitted StreamingPadim as data, not code: tensors in safetensors plus a JSON manifest.

``torch.save`` of a module is a pickle: loading it runs whatever the file holds, and only where
this exact package version is importable. Here the tensors are raw arrays (safetensors cannot hold
code) and the manifest says how to rebuild the model around them: backbone, layers, channel subset,
image size, normalisation and thresholds. Loading checks the format version and the tensors'
SHA-256 before reading them, and building the model from the manifest is the only way in. The
whitening factor is upper triangular, so only its packed triangle is stored: half the size.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import Compose, Normalize, Resize

from .lightning_model import StreamingPadim
from .torch_model import StreamingPadimModel

MANIFEST, TENSORS = "manifest.json", "tensors.safetensors"
FORMAT, FORMAT_VERSION = "padim-plugin/streaming-padim", 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
POST_PROCESSOR_BUFFERS = ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min",
                          "pixel_max")


class ArtifactError(ValueError):
    """A model artifact is missing, tampered with, truncated or of an incompatible format."""


def save_artifact(model: StreamingPadim, folder: Path, image_size: int,
                  metadata_: dict[str, Any] | None = None, dtype: str = "float32") -> Path:
    """Write ``folder/tensors.safetensors`` and ``folder/manifest.json``; returns ``folder``.

    ``dtype`` "float16" stores the backbone weights, means and whitening factor in half precision
    (thresholds stay float32); they are computed in float32 again once loaded.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    core = model.model
    if not core.is_fitted:
        raise ArtifactError("cannot save an unfitted StreamingPadim: fit it first")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"backbone.{name}": value for name, value in core.feature_extractor.state_dict().items()}
    rows, columns = torch.triu_indices(core.n_features, core.n_features)
    tensors |= {
        "channel_index": core.channel_index,
        "mean": core.mean,
        "whitening_packed": core.whitening[:, rows, columns],
    }
    if core.channel_reduction == "projection":
        tensors["projection"] = core.projection
    if core.align_maps:
        tensors["cell_offsets"] = core.measured_cell_offsets()
    tensors = {name: value.to(STORAGE_DTYPES[dtype]) if value.is_floating_point() else value
               for name, value in tensors.items()}
    post = model.post_processor
    tensors |= {f"post_processor.{name}": getattr(post, name) for name in POST_PROCESSOR_BUFFERS}
    save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, folder / TENSORS)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": core.backbone,
        "layers": core.layers,
        "n_features": core.n_features,
        "epsilon": core.epsilon,
        "top_k_percent": core.top_k_percent,
        "pooling": core.pooling,  # already applied to mean and whitening; kept as provenance
        "pooling_window": core.pooling_window,
        "channel_reduction": core.channel_reduction,
        "align_maps": core.align_maps,
        "image_size": image_size,
        "dtype": dtype,
        "normalisation": {"mean": list(_normalize(model).mean), "std": list(_normalize(model).std)},
        "thresholds": {name: float(getattr(post, name)) for name in POST_PROCESSOR_BUFFERS},
        "packages": package_versions("padim-plugin", "anomalib", "torch", "timm"),
        "tensors_sha256": file_sha256(folder / TENSORS),
        "metadata": metadata_ or {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


def load_artifact(folder: Path) -> StreamingPadim:
    """Rebuild the model the manifest describes and load the tensors into it; executes nothing
    from the artifact. Raises ArtifactError naming the file and what is wrong."""
    manifest = read_manifest(folder)
    tensors_path = folder / TENSORS
    if not tensors_path.is_file():
        raise ArtifactError(f"{tensors_path}: missing")
    if file_sha256(tensors_path) != manifest["tensors_sha256"]:
        raise ArtifactError(f"{tensors_path}: content does not match the manifest's SHA-256 (tampered or"
                            " truncated)")
    try:
        tensors = {name: value.float() if value.is_floating_point() else value
                   for name, value in load_file(tensors_path).items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{tensors_path}: not a safetensors file ({error})") from None
    size = manifest["image_size"]
    backbone = manifest["backbone"]
    if not isinstance(backbone, str) or any(c in backbone for c in ":/\\"):  # no hub or file references
        raise ArtifactError(f"{folder / MANIFEST}: backbone {backbone!r} is not a timm model name")
    try:
        model = StreamingPadim(
            backbone=manifest["backbone"],
            layers=manifest["layers"],
            n_features=manifest["n_features"],
            weights=None,  # the backbone's weights come from the artifact, just below
            epsilon=manifest["epsilon"],
            top_k_percent=manifest.get("top_k_percent"),  # absent before it existed: the maximum
            pooling=manifest.get("pooling", "per_position"),
            pooling_window=manifest.get("pooling_window", 3),
            channel_reduction=manifest.get("channel_reduction", "random_subset"),
            align_maps=manifest.get("align_maps", False),
            pre_processor=PreProcessor(transform=Compose([
                Resize((size, size), antialias=True),
                Normalize(mean=manifest["normalisation"]["mean"], std=manifest["normalisation"]["std"]),
            ])),
            evaluator=False,
            visualizer=False,
        )
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        msg = f"{folder / MANIFEST}: describes a model that cannot be built ({error})"
        raise ArtifactError(msg) from None
    core = model.model
    try:
        core.feature_extractor.load_state_dict(
            {name.removeprefix("backbone."): value for name, value in tensors.items()
             if name.startswith("backbone.")}, strict=True)
        reduction = _checked_reduction(core, tensors, tensors_path)
        n_features = core.n_features
        packed = tensors["whitening_packed"]
        whitening = packed.new_zeros(packed.shape[0], n_features, n_features)
        rows, columns = torch.triu_indices(n_features, n_features)
        whitening[:, rows, columns] = packed
        geometry = {"cell_offsets": tensors["cell_offsets"]} if core.align_maps else {}
        core.load_state_dict(reduction | geometry | {"mean": tensors["mean"], "whitening": whitening},
                             strict=False)
        for name in POST_PROCESSOR_BUFFERS:
            getattr(model.post_processor, name).copy_(tensors[f"post_processor.{name}"])
    except (KeyError, RuntimeError) as error:
        raise ArtifactError(f"{tensors_path}: tensors do not fit the manifest's model ({error})") from None
    return model.eval()


def _checked_reduction(core: StreamingPadimModel, tensors: dict[str, torch.Tensor],
                       tensors_path: Path) -> dict[str, torch.Tensor]:
    """The channel subset or projection the artifact holds, once checked against the model."""
    n_total, n_features = sum(core.layer_channels), core.n_features
    if core.channel_reduction == "projection":
        projection = tensors["projection"]
        if projection.shape != (n_total, n_features):
            raise ArtifactError(f"{tensors_path}: projection has shape {tuple(projection.shape)}, not"
                                f" ({n_total}, {n_features})")
        return {"projection": projection}
    index = tensors["channel_index"]
    if (index.dtype not in (torch.int32, torch.int64) or index.numel() != n_features
            or index.unique().numel() != index.numel() or index.min() < 0 or index.max() >= n_total):
        raise ArtifactError(f"{tensors_path}: channel_index is not {n_features} distinct"
                            f" channels of 0..{n_total - 1}")
    return {"channel_index": index}


def read_manifest(folder: Path) -> dict[str, Any]:
    if folder.is_file():
        msg = (f"{folder}: a single-file model, as padim-plugin saved them before its data-only format;"
               " it is not loaded, since loading a pickle runs code: retrain to register a new version")
        raise ArtifactError(msg)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; not a padim-plugin model artifact") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest.get('format_version')!r}; this padim-plugin"
                            f" reads version {FORMAT_VERSION}")
    missing = sorted({"backbone", "layers", "n_features", "epsilon", "image_size", "normalisation",
                      "tensors_sha256"} - manifest.keys())
    if missing:
        raise ArtifactError(f"{path}: missing keys {missing}")
    return manifest


def _normalize(model: StreamingPadim) -> Normalize:
    transform = model.pre_processor.transform
    return next(t for t in getattr(transform, "transforms", [transform]) if isinstance(t, Normalize))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of those ``packages`` that are installed."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
