"""Shared fixtures: small synthetic MVTec-layout data sets made on the fly."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# No test may download weights: hub lookups fail at once instead of retrying for a minute.
# Set before timm / huggingface_hub are imported, since they read it at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
# Prefect keeps its database, cached results and logs under PREFECT_HOME: never the user's.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="padim-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# a task that fails against a remote is retried at once: the tests wait for no backoff
os.environ["PADIM_RETRY_DELAYS_S"] = "0,0"

# MLflow and Prefect attach log handlers to the sys.stderr of the moment they are first imported
# (Prefect lazily: its logging is set up with prefect.main): import them before any test's capsys
# swaps sys.stderr, since a handler left on a closed capture breaks every later log record.
import mlflow  # noqa: F401
import numpy as np
import prefect.main  # noqa: F401
import pytest
from PIL import Image

from flows.output import expect_library_warnings

expect_library_warnings()  # what libraries warn about choices made here on purpose (flows/output.py)


class Synthetic:
    """Textured normal images; defects are bright squares with exact masks."""

    def __init__(self, size: int = 64, seed: int = 0) -> None:
        self.size, self.rng = size, np.random.default_rng(seed)
        self.base = self.rng.normal(128, 20, (size, size, 3))

    def normal(self) -> np.ndarray:
        return np.clip(self.base + self.rng.normal(0, 8, self.base.shape), 0, 255).astype(np.uint8)

    def defect(self) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.normal(), np.zeros((self.size, self.size), np.uint8)
        top, left = self.rng.integers(8, self.size - 24, 2)
        image[top : top + 14, left : left + 14] = 250
        mask[top : top + 14, left : left + 14] = 255
        return image, mask


def write_mvtec_folder(root: Path, n_train: int, n_test_good: int, n_defect: int, size: int = 64,
                       seed: int = 0, n_validation: int = 0) -> Path:
    """An MVTec-layout folder of :class:`Synthetic` images. ``n_validation`` normal and as many
    defect images go to ``validation/``. File names are unique in the line: ``n<i>`` train,
    ``v<i>`` validation, ``t<i>`` test."""
    synthetic = Synthetic(size, seed)
    prefix = {"train": "n", "validation": "v", "test": "t"}
    for split, count in (("train", n_train), ("validation", n_validation), ("test", n_test_good)):
        for i in range(count):
            save(synthetic.normal(), root / split / "good" / f"{prefix[split]}{i:03d}.png")
    for split, count in (("validation", n_validation), ("test", n_defect)):
        for i in range(count):
            image, mask = synthetic.defect()
            save(image, root / split / "spot" / f"{prefix[split]}{i:03d}.png")
            save(mask, root / "ground_truth" / "spot" / f"{prefix[split]}{i:03d}_mask.png")
    return root


def write_flat_folders(root: Path, n_normal: int, n_defect: int, masks: bool = True, size: int = 64,
                       seed: int = 0) -> tuple[Path, Path, Path | None]:
    """Folders as a line's data usually arrives: normal/, defects/ and (if ``masks``) masks/."""
    synthetic = Synthetic(size, seed)
    for i in range(n_normal):
        save(synthetic.normal(), root / "normal" / f"n{i:03d}.png")
    for i in range(n_defect):
        image, mask = synthetic.defect()
        save(image, root / "defects" / f"d{i:03d}.png")
        if masks:
            save(mask, root / "masks" / f"d{i:03d}_mask.png")
    return root / "normal", root / "defects", (root / "masks" if masks else None)


def save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(autouse=True)
def _project_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use their project's SQLite store (or a server they start), never the user's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def tiny_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 normal training images (odd, so DDP must pad), 3 normal and 3 defective test images."""
    return write_mvtec_folder(tmp_path_factory.mktemp("tiny") / "tiny", 7, 3, 3)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
