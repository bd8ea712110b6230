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

import numpy as np
import pytest
from PIL import Image

MTD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mtd"


def write_mvtec_folder(root: Path, n_train: int, n_test_good: int, n_defect: int, size: int = 64,
                       seed: int = 0) -> Path:
    """Textured normal images; defects are bright squares with exact masks."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 20, (size, size, 3))

    def normal_image() -> np.ndarray:
        return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)

    for split, count in (("train", n_train), ("test", n_test_good)):
        folder = root / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(normal_image()).save(folder / f"{i:03d}.png")
    (root / "test" / "spot").mkdir(parents=True, exist_ok=True)
    (root / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
    for i in range(n_defect):
        image = normal_image()
        mask = np.zeros((size, size), np.uint8)
        top, left = rng.integers(8, size - 24, 2)
        image[top : top + 14, left : left + 14] = 250
        mask[top : top + 14, left : left + 14] = 255
        Image.fromarray(image).save(root / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return root


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
