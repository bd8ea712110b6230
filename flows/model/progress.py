"""Progress of a long step (a fit streaming images, a role being scored) as log lines a person can
follow: images done out of the total and the time elapsed, every ``every_s`` seconds and at the end.

A Lightning callback, so fitting and predicting report through the Engine that runs them, whatever
device or process runs it (a loop of its own calls ``start``, ``advance`` and ``end``); the lines go
to this module's logger, which padim's console shows.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

EVERY_S = 10.0  # a line at most this often: a slow step shows it is alive, a fast one prints little


class ImageProgress(Callback):
    """Log ``<line>: <done>/<total> <what>, <elapsed> s`` while a fit or predict loop runs, and
    ``<line>: <done> <what> in <elapsed> s`` at its end (``what``: "train images embedded")."""

    def __init__(self, line: str, what: str, total: int, every_s: float | None = None) -> None:
        self.line, self.what, self.total = line, what, total
        self.every_s = EVERY_S if every_s is None else every_s
        self.done, self.started, self.last = 0, 0.0, 0.0

    def start(self) -> None:
        self.done, self.started = 0, time.monotonic()
        self.last = self.started

    def advance(self, images: int) -> None:
        self.done += images
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            logger.info("%s: %d/%d %s, %.0f s", self.line, self.done, self.total, self.what,
                        now - self.started)

    def end(self) -> None:
        logger.info("%s: %d %s in %.1f s", self.line, self.done, self.what, time.monotonic() - self.started)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.advance(len(batch.image))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.end()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start()

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.advance(len(batch.image))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.end()
