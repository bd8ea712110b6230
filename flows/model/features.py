"""Kept backbone features of validation and test images: an evaluation costs what changed.

What the backbone makes of an image (its three feature maps) depends on the image's content and
the feature config only: the backbone, its layers and weights, the input size and pre-processing,
and the code. It never depends on the fitted Gaussians. So a retrain keeps the maps of every
validation and test image it scored, and the next retrain of the line (a new model, new data)
runs the backbone only on images it has not seen, and scores the others from their kept maps.
The scores equal a fresh evaluation up to float rounding (tests/flows/test_kept_features.py).

Layout: ``.padim/features/<line>/<config>/<image sha256>.safetensors``. A file appears whole (it
is written aside and renamed), and one that cannot be read is embedded again. After a retrain,
:meth:`KeptFeatures.collect_garbage` keeps only the files of the line's current validation and test
images under the configs the retrain used, so the cache holds at most one data version's
evaluation images per config in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from padim_plugin import StreamingPadim
from padim_plugin.backbones import weights_digest

logger = logging.getLogger(__name__)

FEATURES = Path(".padim") / "features"
SUFFIX = ".safetensors"


def image_digest(path: Path) -> str:
    """The sha256 of an image file's bytes: its features' name whatever the file is called."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def feature_config(model: StreamingPadim, code_version: str) -> str:
    """Hash of what decides an image's backbone maps: the backbone's weights (hashed), layers and
    pre-processing as this model holds them, and the code."""
    core = model.model
    text = "|".join((core.backbone, ",".join(core.layers), repr(model.pre_processor.transform),
                     weights_digest(core.feature_extractor), torch.__version__, code_version))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ModelFeatures:
    """The kept maps of one feature config: read, and kept as they are made."""

    folder: Path

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}{SUFFIX}"

    def get(self, digest: str) -> list[torch.Tensor] | None:
        """The image's maps, one (C_l, h_l, w_l) tensor per layer; None when not kept (or unreadable)."""
        path = self.path(digest)
        try:
            tensors = load_file(path)
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError) as error:
            logger.warning("embedding again: kept features %s cannot be read (%s)", path, error)
            return None
        return [tensors[f"layer{index}"] for index in range(len(tensors))]

    def keep(self, digest: str, maps: Iterable[torch.Tensor]) -> None:
        """Keep one image's maps (a file appears whole, by one rename)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer{index}": tensor.detach().cpu().contiguous() for index, tensor in enumerate(maps)}
        handle, partial = tempfile.mkstemp(prefix=".partial-", suffix=SUFFIX, dir=self.folder)
        os.close(handle)
        try:
            save_file(tensors, partial)
            os.replace(partial, self.path(digest))
        finally:
            Path(partial).unlink(missing_ok=True)


class KeptFeatures:
    """A line's kept features under the project's cache, one folder per feature config."""

    def __init__(self, root: Path, line: str, code_version: str) -> None:
        self.folder = root / FEATURES / line
        self.code_version = code_version

    def config(self, model: StreamingPadim) -> str:
        return feature_config(model, self.code_version)

    def for_model(self, model: StreamingPadim) -> ModelFeatures:
        return ModelFeatures(self.folder / self.config(model))

    def n_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.folder.rglob(f"*{SUFFIX}"))

    def collect_garbage(self, configs: set[str], digests: set[str]) -> int:
        """Delete every kept file not of one of ``configs`` and ``digests`` (the images of the
        line's current version), and files left half-written; returns the bytes freed."""
        if not self.folder.is_dir():
            return 0
        freed = 0
        for config in self.folder.iterdir():
            if config.name not in configs:
                freed += sum(path.stat().st_size for path in config.rglob("*") if path.is_file())
                shutil.rmtree(config, ignore_errors=True)
                continue
            for path in config.iterdir():
                if path.name.startswith(".partial-") or path.name.removesuffix(SUFFIX) not in digests:
                    freed += path.stat().st_size
                    path.unlink(missing_ok=True)
        return freed
