"""Fit StreamingPadim on one product line's train role through anomalib's Engine, then set its
threshold and normalisation from the validation role only.

Shared by the Prefect flow and the DVC pipeline stage, so both produce the same model from the
same params and data.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from padim_plugin import StreamingGaussian, StreamingPadim

from ..config import LineParams
from .build import build_datamodule, build_model, engine
from .features import KeptFeatures
from .predictions import predict_role
from .progress import ImageProgress
from .thresholds import Calibration, calibrate


def embed_statistics(params: LineParams, data_path: Path, work_dir: Path,
                     images: Collection[str] | None = None) -> StreamingGaussian:
    """Stream the train role's images (or only ``images``, paths within the line) through the
    line's model and return their statistics, without fitting Gaussians to them."""
    model = build_model(params)
    model.finalize_after_fit = False
    work_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(params, data_path)
    datamodule.setup()
    if images is not None:
        dataset = datamodule.train_data
        wanted = {str(data_path / image) for image in images}
        dataset.samples = dataset.samples[dataset.samples.image_path.isin(wanted)].reset_index(drop=True)
        missing = sorted(wanted - set(dataset.samples.image_path))
        if missing:
            raise FileNotFoundError(f"{len(missing)} training image(s) not in {data_path}: {missing[:5]}")
    progress = ImageProgress(params.name, "train images embedded", len(datamodule.train_data))
    engine(work_dir, progress).fit(model=model, train_dataloaders=datamodule.train_dataloader())
    return model.model.gaussian.cpu()


def model_from_statistics(params: LineParams, statistics: StreamingGaussian) -> StreamingPadim:
    """The line's model with its Gaussians fitted to ``statistics`` (which it then holds)."""
    model = build_model(params)
    model.model.gaussian = statistics
    model.model.finalize()
    return model


def fit_statistics(params: LineParams, data_path: Path, work_dir: Path) -> StreamingPadim:
    """Stream the train role into a new model: finalized, and still holding its statistics (so
    that another pooling can finalize them anew)."""
    return model_from_statistics(params, embed_statistics(params, data_path, work_dir))


def fit_line(params: LineParams, data_path: Path, work_dir: Path,
             statistics: StreamingGaussian | None = None,
             kept: KeptFeatures | None = None) -> tuple[StreamingPadim, Calibration]:
    """Fit on the train role (or on its ``statistics``, gathered already), then set threshold and
    normalisation from the validation role only (callers validate the data first), scored from
    the ``kept`` features where there are some. The test role is never read here.

    The fitted model keeps the mean and whitening factor it scores with, not the streamed
    statistics (they are only needed to keep fitting, see flows.model.incremental), so the saved model
    stays small.
    """
    if statistics is None:
        statistics = embed_statistics(params, data_path, work_dir)
    model = model_from_statistics(params, statistics)
    model.model.gaussian = StreamingGaussian()
    validation = predict_role(model, params, data_path, "validation", work_dir, kept)
    calibration = calibrate(validation.labels, validation.scores, validation.pixel_labels,
                            validation.pixel_scores, validation.map_range, params.thresholds)
    apply_calibration(model, calibration)
    return model, calibration


def apply_calibration(model: StreamingPadim, calibration: Calibration) -> None:
    """Write thresholds and min/max into the model's post-processor, which labels and normalises
    every score the model gives from then on (exports and the MLflow pyfunc included)."""
    post = model.post_processor
    for buffer, value in (
        (post._image_threshold, calibration.image_threshold),  # anomalib's buffers
        (post._pixel_threshold, calibration.pixel_threshold),
        (post.image_min, calibration.image_min), (post.image_max, calibration.image_max),
        (post.pixel_min, calibration.pixel_min), (post.pixel_max, calibration.pixel_max),
    ):
        buffer.fill_(value)
