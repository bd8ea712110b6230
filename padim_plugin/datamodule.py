"""An anomalib datamodule for one product in MVTec AD layout, with any common image format.

anomalib's MVTecAD reads only .png and pairs masks with images by sort order; here the listing of
:mod:`padim_plugin.mvtec` pairs them by name.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode

from .mvtec import mvtec_samples


class MVTecLayoutDataset(AnomalibDataset):
    """The images of one split of an MVTec-layout folder."""

    def __init__(self, root: str | Path, split: Split | str, augmentations=None) -> None:  # noqa: ANN001
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.samples = mvtec_samples(self.root, Split(split).value)


class MVTecLayout(AnomalibDataModule):
    """Datamodule for one product line stored in MVTec AD layout (train/test/ground_truth)."""

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        seed: int | None = None,
        **kwargs,  # noqa: ANN003  # augmentations, passed to AnomalibDataModule
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=val_split_mode,
            seed=seed,
            **kwargs,
        )
        self.root = Path(root)
        self._name = name or self.root.name
        self.category = self._name

    @property
    def name(self) -> str:
        return self._name

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = MVTecLayoutDataset(self.root, Split.TRAIN)
        self.test_data = MVTecLayoutDataset(self.root, Split.TEST)
