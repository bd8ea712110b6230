"""StreamingPadim: the anomalib Lightning module around :class:`StreamingPadimModel`.

One epoch over the normal images folds each batch into running statistics; at the end of the
epoch the statistics of every device are all-reduced once and the Gaussians are finalized.
Nothing is kept per image, so memory does not grow with the training set, and any number of
devices (Lightning DDP) gives the same model as one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.deploy import CompressionType
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DistributedSampler

from .gaussian import NotFittedError
from .strategy import StreamingDDPStrategy
from .torch_model import StreamingPadimModel

logger = logging.getLogger(__name__)

ONNX_OPSET = 18


class StreamingPadim(AnomalibModule):
    """PaDiM with memory-free, multi-device Gaussian fitting.

    Args:
        backbone: timm model name; ``efficientnet_lite0``/``1``/``2`` have offline ImageNet weights.
        layers: three feature layers; default per backbone (ResNets: layer1-3).
        n_features: size of the seeded random channel subset; None keeps all channels.
        weights: ``"imagenet"``, a local weights file, or None for random weights.
        seed: seed of the channel subset.
        epsilon: added to each covariance's diagonal.
        top_k_percent: image score = mean of the map's top k% pixels; None = the map's maximum.
        pooling: "per_position" (the paper), "neighbourhood" (each position's Gaussian fitted to a
            ``pooling_window`` x ``pooling_window`` window of positions) or "shared" (one for all).
        align_maps: place each layer's cells and the map where the backbone's features look
            (padim_plugin.alignment), instead of about 11 px up and left of the defects.
        channel_reduction: "random_subset" (the paper) or "projection" (a seeded semi-orthogonal
            projection of all channels onto ``n_features``).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] | None = None,
        n_features: int | None = None,
        weights: str | Path | None = "imagenet",
        seed: int = 0,
        epsilon: float = 0.01,
        top_k_percent: float | None = None,
        pooling: str = "per_position",
        pooling_window: int = 3,
        align_maps: bool = False,
        channel_reduction: str = "random_subset",
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = StreamingPadimModel(
            backbone=backbone,
            layers=layers,
            n_features=n_features,
            weights=str(weights) if isinstance(weights, Path) else weights,
            seed=seed,
            epsilon=epsilon,
            top_k_percent=top_k_percent,
            pooling=pooling,
            pooling_window=pooling_window,
            align_maps=align_maps,
            channel_reduction=channel_reduction,
        )
        self._samples_left: int | None = None
        self._fit_pending = False
        # False: a fit only gathers the statistics (model.gaussian), e.g. of images to merge into
        # or take out of kept ones; model.finalize() then fits the Gaussians once they are complete
        self.finalize_after_fit = True

    @staticmethod
    def configure_optimizers() -> None:
        """Fitting is closed-form: no optimizer."""
        return

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """One pass over the data; devices are left to the user (DDP merges the statistics)."""
        return {"max_epochs": 1, "val_check_interval": 1.0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        return LearningType.ONE_CLASS

    def setup(self, stage: str) -> None:
        """Point users of plain DDP at the strategy that fits a model with nothing to train."""
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, StreamingDDPStrategy):
            msg = (
                f"StreamingPadim trains no parameters, so {type(strategy).__name__} cannot wrap it in"
                " DistributedDataParallel: use strategy='ddp_streaming' (or"
                " padim_plugin.StreamingDDPStrategy(...)) for several devices"
            )
            raise ValueError(msg)

    def on_train_start(self) -> None:
        """Start every fit from empty statistics, and learn how many samples this rank owns."""
        self.model.reset()
        self._samples_left = _unpadded_share(self.trainer.train_dataloader)
        self._fit_pending = True

    def training_step(self, batch: Batch, batch_idx: int, *args, **kwargs) -> torch.Tensor:
        del args, kwargs
        images = batch.image
        if self._samples_left is not None:
            # DistributedSampler repeats samples to even out the ranks; they must count only once
            images = images[: self._samples_left]
            self._samples_left -= images.shape[0]
        if images.shape[0]:
            self.model.accumulate(images, batch_name=_describe(batch, batch_idx))
        # Lightning needs a loss; nothing is optimised
        return torch.tensor(0.0, requires_grad=True, device=self.device)

    def on_validation_start(self) -> None:
        """Lightning validates before ``on_train_epoch_end``: the model must be ready by then."""
        self._finalize_pending_fit()

    def on_train_epoch_end(self) -> None:
        self._finalize_pending_fit()

    def _finalize_pending_fit(self) -> None:
        if not self._fit_pending or self.trainer.state.fn != TrainerFn.FITTING:
            return
        self._fit_pending = False
        self.model.gaussian.all_reduce()
        if not self.finalize_after_fit:
            return
        positions, _ = self.model.gaussian.shape
        logger.info("Fitting %d Gaussians from %d images.", positions, self.model.gaussian.n_samples)
        self.model.finalize()

    def validation_step(self, batch: Batch, *args, **kwargs) -> Batch:
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def to_torch(self, *args: Any, **kwargs: Any) -> Path:
        self._require_fitted("export")
        return super().to_torch(*args, **kwargs)

    def to_onnx(self, *args: Any, **kwargs: Any) -> Path:
        """anomalib's export (``to_openvino`` goes through it too), at the lowest opset torch's
        exporter implements: asking for less, as anomalib does, only adds a conversion that fails."""
        self._require_fitted("export")
        kwargs.setdefault("opset_version", ONNX_OPSET)
        kwargs.setdefault("external_data", True)  # weights beside the graph: no 2 GiB protobuf limit
        with _no_stack_traces_in_traced_graphs():
            return super().to_onnx(*args, **kwargs)

    def to_openvino(self, *args: Any, compression_type: CompressionType | None = None, **kwargs: Any) -> Path:
        """anomalib's export; INT8 compression is refused: with Gaussians fitted on float32
        features it cost 0.14 image AUROC on MTD (bench/int8.py)."""
        self._require_fitted("export")
        if compression_type not in (None, CompressionType.FP16):
            raise ValueError(f"compression {compression_type} is not supported for StreamingPadim: the"
                             " Gaussians are fitted on float32 features (bench/int8.py measures the loss)")
        return super().to_openvino(*args, compression_type=compression_type, **kwargs)

    def _require_fitted(self, action: str) -> None:
        if not self.model.is_fitted:
            raise NotFittedError(f"cannot {action} StreamingPadim before it is fitted: run fit first")


@contextmanager
def _no_stack_traces_in_traced_graphs() -> Iterator[None]:
    """torch.export records the Python stack of every traced node, only for its error messages:
    on CPU that was half the time of an ONNX export (a tiny model: 16.5-20.7 s with, 9.5-9.9 s
    without)."""
    emitting = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = emitting


def _unpadded_share(dataloader: object) -> int | None:
    """Samples of the dataset this rank owns, when a padding DistributedSampler feeds it."""
    sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))


def _describe(batch: Batch, batch_idx: int) -> str:
    paths = getattr(batch, "image_path", None)
    if paths:
        shown = ", ".join(str(p) for p in list(paths)[:3])
        return f"training batch {batch_idx} ({shown}{', ...' if len(paths) > 3 else ''})"
    return f"training batch {batch_idx}"
