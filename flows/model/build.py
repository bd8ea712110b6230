"""The line's model as params.yaml describes it, its data as dataloaders, the Engine that runs
them, and the model saved and loaded as data: what fitting, predicting and evaluating share.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.engine import Engine
from torchvision.transforms.v2 import Resize

from padim_plugin import StreamingPadim
from padim_plugin.artifact import load_artifact, save_artifact
from padim_plugin.datamodule import MVTecLayout

from ..config import LineParams
from .progress import ImageProgress


def build_model(params: LineParams) -> StreamingPadim:
    """The line's model: every key of params.yaml's ``model`` section is a StreamingPadim argument."""
    size = params.data.image_size
    return StreamingPadim(
        **params.model.model_dump(),
        pre_processor=StreamingPadim.configure_pre_processor((size, size)),
        evaluator=False,  # flows.model.evaluate computes the metrics, on raw and thresholded outputs
        visualizer=False,
    )


def build_datamodule(params: LineParams, data_path: Path) -> MVTecLayout:
    """The line's roles as dataloaders. Each image is resized on its own, as the model's
    pre-processor would (anomalib adds that only under a trainer's setup): otherwise a batch of
    images of different sizes is stretched to its largest one before the model sees it, and an
    image's score would depend on its batch neighbours and differ from serving it alone."""
    data = params.data
    return MVTecLayout(
        data_path,
        name=params.name,
        train_batch_size=data.train_batch_size,
        eval_batch_size=data.eval_batch_size,
        num_workers=data.num_workers,
        val_split_mode="from_dir",  # thresholds come from validation/, never from the test split
        augmentations=Resize((data.image_size, data.image_size), antialias=True),
    )


def engine(work_dir: Path, progress: ImageProgress) -> Engine:
    """The Engine of one fit or predict loop, which reports its ``progress``."""
    return Engine(accelerator="auto", devices=1, default_root_dir=work_dir, barebones=True,
                  callbacks=[progress])


def save_model(model: StreamingPadim, params: LineParams, folder: Path, data_md5: str = "") -> Path:
    """The model as data (padim_plugin.artifact: safetensors + manifest), never a pickle."""
    return save_artifact(model.cpu().eval(), folder, params.data.image_size,
                         {"line": params.name, "data_md5": data_md5}, dtype=params.export.dtype)


def load_model(folder: Path) -> StreamingPadim:
    return load_artifact(folder)
