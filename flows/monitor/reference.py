"""What a model is monitored against, kept with it at fit time (the run's
``monitoring/reference.json``): its validation normal images' scores and the image statistics
(padim_plugin.image_statistics) of its training images.

The validation normals are scored again here the way production scores images (decoded files
through padim_plugin.scoring, normalised with the threshold at 0.5), not taken from calibration:
calibration reads images through anomalib's data module, whose decoding and resizing give scores
a little apart from the served ones (on MTD at 128 px, served normals score 0.02 higher, as the
median normalised score), and a monitor that compared the two would see drift where there is none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from padim_plugin import StreamingPadim
from padim_plugin.image_statistics import STATISTICS, image_statistics
from padim_plugin.images import decode_image
from padim_plugin.mvtec import mvtec_samples
from padim_plugin.scoring import score_images

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


def build_reference(model: StreamingPadim, data_path: Path) -> MonitoringReference:
    """The reference of a fitted, calibrated ``model`` on the line data at ``data_path``."""
    samples = mvtec_samples(data_path)
    normals = sorted(samples.image_path[(samples.split == "val") & (samples.label_index == 0)])
    training = sorted(samples.image_path[samples.split == "train"])
    spread = np.linspace(0, len(training) - 1, min(len(training), MOST_TRAINING_IMAGES)).astype(int)
    measured = [image_statistics(decode_image(training[i])) for i in spread]
    return MonitoringReference(served_scores(model, normals),
                               {name: [row[name] for row in measured] for name in STATISTICS})


def served_scores(model: StreamingPadim, paths: list[str], batch: int = 32) -> list[float]:
    """Normalised image scores of ``paths``, decoded and scored as production scores them."""
    was_training = model.training
    model.eval()  # the post-processor normalises only in eval mode
    try:
        return [float(score) for start in range(0, len(paths), batch)
                for score in score_images(model, [decode_image(path) for path in paths[start:start + batch]])[
                    "pred_score"]]
    finally:
        model.train(was_training)
