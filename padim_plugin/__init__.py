"""PaDiM for anomalib with memory-free, mergeable Gaussian fitting.

Names are imported on first use, so that tools needing only :mod:`padim_plugin.mvtec` do not pay
for importing anomalib and torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NotFittedError": ".gaussian",
    "PRESETS": ".presets",
    "StreamingGaussian": ".gaussian",
    "StreamingPadim": ".lightning_model",
    "StreamingPadimModel": ".torch_model",
    "StreamingDDPStrategy": ".strategy",
    "WeightsMismatchError": ".backbones",
    "WeightsUnavailableError": ".backbones",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'padim_plugin' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
