"""Fit StreamingPadim on one product line's data through anomalib's Engine, and save/load it.

Shared by the Prefect flow and the DVC pipeline stage, so both produce the same model from the
same params and data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from padim_plugin import StreamingPadim
from padim_plugin.datamodule import MVTecLayout

from .config import LineParams

logger = logging.getLogger(__name__)


def build_model(params: LineParams) -> StreamingPadim:
    model = params.model
    size = params.data.image_size
    return StreamingPadim(
        backbone=model.backbone,
        layers=model.layers,
        n_features=model.n_features,
        weights=model.weights,
        seed=model.seed,
        epsilon=model.epsilon,
        pre_processor=StreamingPadim.configure_pre_processor((size, size)),
        evaluator=False,  # flows.evaluate computes the metrics, on raw and thresholded outputs
        visualizer=False,
    )


def build_datamodule(params: LineParams, data_path: Path) -> MVTecLayout:
    data = params.data
    return MVTecLayout(
        data_path,
        name=params.name,
        train_batch_size=data.train_batch_size,
        eval_batch_size=data.eval_batch_size,
        num_workers=data.num_workers,
    )


def engine(work_dir: Path):  # noqa: ANN201  # anomalib.engine.Engine, imported lazily
    from anomalib.engine import Engine

    return Engine(accelerator="auto", devices=1, default_root_dir=work_dir, barebones=True)


def fit_line(params: LineParams, data_path: Path, work_dir: Path) -> StreamingPadim:
    """Fit on train/good and pick the threshold on the test split (callers validate the data first).

    The fitted model keeps the mean and whitening factor it scores with and drops the streamed
    statistics (they are only needed to keep fitting), so the saved model stays small.
    """
    model = build_model(params)
    work_dir.mkdir(parents=True, exist_ok=True)
    engine(work_dir).fit(model=model, datamodule=build_datamodule(params, data_path))
    logger.info("%s: fitted on %d images", params.name, model.model.gaussian.n_samples)
    model.model.gaussian.reset()
    return model


def save_model(model: StreamingPadim, path: Path) -> Path:
    """The format of anomalib's torch export: ``{"model": module}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.cpu().eval()}, path)
    return path


def load_model(path: Path) -> StreamingPadim:
    return torch.load(path, map_location="cpu", weights_only=False)["model"].eval()
