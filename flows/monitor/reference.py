"""What a model is monitored against, kept with it at fit time (the run's
``monitoring/reference.json``): its validation normal images' scores, normalised as production
scores are (threshold at 0.5), the false-alarm rate they give at its threshold, and the image
statistics (padim_plugin.image_statistics) of its training images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from padim_plugin import StreamingPadim
from padim_plugin.image_statistics import STATISTICS, image_statistics
from padim_plugin.images import decode_image
from padim_plugin.mvtec import mvtec_samples

from ..model.thresholds import Calibration

MOST_TRAINING_IMAGES = 500  # measured at fit time: spread evenly over the training images


@dataclass(frozen=True)
class MonitoringReference:
    normal_scores: list[float]  # validation normals, normalised: the threshold sits at 0.5
    training_statistics: dict[str, list[float]]  # STATISTICS of training images

    @property
    def false_alarms(self) -> int:
        """Validation normal images the threshold flags (strictly above it, as the model labels)."""
        return int((np.asarray(self.normal_scores) > 0.5).sum())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict) -> MonitoringReference:
        return cls(list(document["normal_scores"]), dict(document["training_statistics"]))

    @classmethod
    def load(cls, path: Path) -> MonitoringReference:
        return cls.from_dict(json.loads(path.read_text()))


def build_reference(model: StreamingPadim, calibration: Calibration, data_path: Path) -> MonitoringReference:
    """The reference of a fitted, calibrated ``model`` on the line data at ``data_path``."""
    post = model.post_processor
    raw = torch.tensor(calibration.normal_scores, dtype=torch.float32)
    normalised = post._normalize(raw, post.image_min, post.image_max, post.image_threshold)  # as scoring does
    samples = mvtec_samples(data_path)
    train = sorted(samples.image_path[samples.split == "train"])
    chosen = [train[int(i)] for i in np.linspace(0, len(train) - 1, min(len(train), MOST_TRAINING_IMAGES))]
    measured = [image_statistics(decode_image(path)) for path in chosen]
    return MonitoringReference([float(score) for score in normalised],
                               {name: [row[name] for row in measured] for name in STATISTICS})
