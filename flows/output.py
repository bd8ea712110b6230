"""What a person sees: padim's own progress lines, warnings and errors; not the libraries' chatter.

Lightning's trainer banners, Prefect's engine lines ("Finished in state Completed()"), MLflow's
progress bars and the warnings libraries raise about choices this project makes on purpose are
silenced here, each with its reason; anything at warning level or above from anywhere still shows,
and errors are never hidden. ``padim-mlops --verbose`` keeps everything.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FLOWS = str(Path(__file__).resolve().parent)

# (message regex, why it is expected here): raised by libraries about what this project does on purpose
EXPECTED_WARNINGS = (
    (r"You defined a `validation_step` but have no `val_dataloader`",
     "a fit streams the train role only; validation is scored afterwards, by flows.model.predictions"),
    (r"`LightningModule.configure_optimizers` returned `None`", "PaDiM fits statistics: nothing to optimise"),
    (r"Found \d+ module\(s\) in eval mode at the start of training", "the pretrained backbone stays frozen"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "inside lightning, about torch's pytree API"),
    (r"Type hint used in the model's predict function is not supported",
     "the pyfunc checks its inputs itself: pixels or encoded images, which no MLflow schema states"),
    (r"Failed to infer signature from type hint", "the same: the signature is logged explicitly"),
    (r"Importing from timm.models.layers is deprecated", "inside anomalib"),
    (r"The anomalib.models.components.dinov2 package is deprecated", "inside anomalib, not used here"),
    (r"The ``noload`` loader strategy is deprecated", "inside MLflow's SQLAlchemy tracking store"),
    (r"'pin_memory' argument is set as true but no accelerator is found",
     "anomalib's dataloaders pin memory for a GPU; a CPU-only machine has none to pin"),
    (r"For backward compatibility, 'str' dtypes are included by select_dtypes", "inside MLflow's client"),
)
QUIET_LOGGERS = {
    "lightning": logging.WARNING, "lightning_fabric": logging.WARNING,  # trainer banners and tips
    "lightning.pytorch": logging.WARNING,
    "anomalib.engine.engine": logging.ERROR,  # "ckpt_path is not provided": models are passed in, fitted
}
_ONE_BLOCK_AT_A_TIME = threading.Lock()


def expect_library_warnings() -> None:
    """Ignore the EXPECTED_WARNINGS (the test suite does so too), wherever in the text they stand
    (MLflow colours its warnings)."""
    for message, _why in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{message}")


def expected(warning: warnings.WarningMessage) -> bool:
    return any(re.search(message, str(warning.message)) for message, _why in EXPECTED_WARNINGS)


@contextmanager
def without_expected_warnings() -> Iterator[None]:
    """Drop the EXPECTED_WARNINGS raised in the block and pass the others on: for calls (MLflow's
    log_model) that reset the warning filters inside, so that ignoring them outside cannot work.
    One block at a time: the warning filters are the process's, and two lines' retrains running in
    threads would otherwise restore each other's (letting one's warnings through)."""
    with _ONE_BLOCK_AT_A_TIME, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if not expected(warning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


class OwnProgressOnly(logging.Filter):
    """Info lines from padim's flows pass; other libraries' info lines do not; warnings always do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(FLOWS)


def quiet_libraries(verbose: bool) -> None:
    """Show padim's progress lines (its loggers' info level) and silence library chatter on the
    console (see the module docstring), unless ``verbose``."""
    logging.getLogger(__package__).setLevel(logging.INFO)
    import prefect.main  # noqa: F401  # Prefect puts its console handler on the root logger as it loads

    if verbose:
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level as it loads
    expect_library_warnings()
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, OwnProgressOnly) for existing in handler.filters):
            handler.addFilter(OwnProgressOnly())
