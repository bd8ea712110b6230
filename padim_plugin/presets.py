"""Named option sets of StreamingPadim, so that a team names a measured choice instead of four flags.

- ``aligned``: the paper's model with its cells and map placed where the backbone's features look
  (``align_maps``): the heat sits on the defect. It won or tied on every line measured (MTD with
  and without masks, the demo lines: ``bench/defaults.py``), so it is the flows' default.
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
