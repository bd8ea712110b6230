"""Named option sets of StreamingPadim, so that a team names a measured choice instead of four flags.

- ``aligned``: the paper's model with its cells and map placed where the backbone's features look
  (``align_maps``): the heat sits on the defect. Over six draws of the roles it won on MTD (256 and
  128 px) every time and on the demo's brick and grass, and lost the demo's gravel texture
  (``bench/defaults.py``, bench/README.md): it is the flows' default, and a line names ``paper``
  where its own measurements favour it.
- ``paper``: Defard et al. as published, which is also anomalib's Padim and the constructor's own
  defaults (``StreamingPadim()`` stays a drop-in for anomalib's ``Padim``).

A preset sets only the options below; backbone, layers, channels, seed and epsilon are separate.
"""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "aligned": {"align_maps": True, "channel_reduction": "random_subset", "pooling": "per_position",
                "top_k_percent": None},
    "paper": {"align_maps": False, "channel_reduction": "random_subset", "pooling": "per_position",
              "top_k_percent": None},
}
PRESET_OPTIONS = frozenset(PRESETS["paper"])
