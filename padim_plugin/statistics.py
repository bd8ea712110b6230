"""Kept statistics: a fit's sufficient statistics as data, so a later fit can continue from them.

A fitted model keeps only what it scores with (mean and whitening factor). Its statistics (count,
shift, shifted sums and scatter, float64) are what another fit can merge into or subtract from,
so they are stored on their own: ``tensors.safetensors`` (the symmetric scatter as its packed
upper triangle: half the size) and ``manifest.json`` (format, shapes and the caller's metadata,
e.g. which images went into them). Nothing here is a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .gaussian import StreamingGaussian

FORMAT = "padim-plugin.statistics"
FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"


class StatisticsError(ValueError):
    """Kept statistics are missing, damaged or of another format; the message names the folder."""


def save_statistics(gaussian: StreamingGaussian, folder: Path, metadata: dict[str, Any]) -> int:
    """Write the statistics of ``gaussian`` into ``folder``; returns the bytes written."""
    if gaussian.n_samples == 0:
        raise StatisticsError(f"{folder}: no statistics to keep (no images were seen)")
    gaussian.flush()
    n_channels = gaussian.shape[1]
    rows, columns = torch.triu_indices(n_channels, n_channels)
    tensors = {
        "count": gaussian.count,
        "shift": gaussian.shift,
        "shifted_sum": gaussian.shifted_sum,
        "shifted_scatter_packed": gaussian.shifted_scatter[:, rows, columns],
        "grid": gaussian.grid,
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, folder / TENSORS)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_images": gaussian.n_samples,
                "positions": gaussian.shape[0], "channels": n_channels, "metadata": metadata}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return sum(path.stat().st_size for path in (folder / TENSORS, folder / MANIFEST))


def read_metadata(folder: Path) -> dict[str, Any]:
    """The metadata saved with the statistics in ``folder``."""
    return _manifest(folder)["metadata"]


def load_statistics(folder: Path) -> StreamingGaussian:
    """The statistics saved in ``folder``, ready to merge into or subtract from."""
    manifest = _manifest(folder)
    try:
        tensors = load_file(folder / TENSORS)
    except (OSError, SafetensorError) as error:
        raise StatisticsError(f"{folder / TENSORS}: cannot be read as statistics ({error})") from error
    n_positions, n_channels = manifest["positions"], manifest["channels"]
    expected = {"count": (), "shift": (n_positions, n_channels), "shifted_sum": (n_positions, n_channels),
                "shifted_scatter_packed": (n_positions, n_channels * (n_channels + 1) // 2)}
    for name, shape in expected.items():
        found = tensors.get(name)
        if found is None or tuple(found.shape) != shape or found.dtype != torch.float64:
            got = "missing" if found is None else f"{tuple(found.shape)} {found.dtype}"
            raise StatisticsError(f"{folder / TENSORS}: {name} should be {shape} float64, got {got}")
    rows, columns = torch.triu_indices(n_channels, n_channels)
    scatter = torch.empty(n_positions, n_channels * n_channels, dtype=torch.float64)
    for triangle in (rows * n_channels + columns, columns * n_channels + rows):  # upper, then lower
        scatter.index_copy_(1, triangle, tensors["shifted_scatter_packed"])
    gaussian = StreamingGaussian()
    gaussian.load_state_dict({"count": tensors["count"], "shift": tensors["shift"],
                              "shifted_sum": tensors["shifted_sum"], "grid": tensors["grid"],
                              "shifted_scatter": scatter.view(-1, n_channels, n_channels)})
    if gaussian.n_samples != manifest["n_images"]:
        msg = (f"{folder}: the tensors hold {gaussian.n_samples} images, the manifest says"
               f" {manifest['n_images']}")
        raise StatisticsError(msg)
    return gaussian


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise StatisticsError(f"{folder / MANIFEST}: cannot be read ({error})") from error
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        msg = (f"{folder / MANIFEST}: not {FORMAT} version {FORMAT_VERSION}"
               f" (found {manifest.get('format')!r} {manifest.get('format_version')!r})")
        raise StatisticsError(msg)
    return manifest
