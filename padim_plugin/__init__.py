"""PaDiM for anomalib with memory-free, mergeable Gaussian fitting."""

from .backbones import WeightsMismatchError, WeightsUnavailableError
from .gaussian import NotFittedError, StreamingGaussian
from .lightning_model import StreamingPadim
from .strategy import StreamingDDPStrategy
from .torch_model import StreamingPadimModel

__all__ = [
    "NotFittedError",
    "StreamingGaussian",
    "StreamingDDPStrategy",
    "StreamingPadim",
    "StreamingPadimModel",
    "WeightsMismatchError",
    "WeightsUnavailableError",
]
