"""An anomalib datamodule for one product in MVTec AD layout, with any common image format.

anomalib's MVTecAD reads only .png, pairs masks with images by sort order and needs a mask for
every defect image; here the listing of :mod:`padim_plugin.mvtec` pairs them by name, masks are
optional, a ``validation/`` folder is the validation split, and every image is decoded by
:func:`padim_plugin.images.decode_image` (16-bit greyscale scaled by its range, not clipped).
"""

from __future__ import annotations

from pathlib import Path

import torch
from anomalib.data import AnomalibDataModule, ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from anomalib.data.utils.image import read_mask
from torch.utils.data import DataLoader
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from .images import decode_image
from .mvtec import mvtec_samples


class MVTecLayoutDataset(AnomalibDataset):
    """The images of one split of an MVTec-layout folder."""

    def __init__(self, root: str | Path, split: Split | str, augmentations=None) -> None:
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.samples = mvtec_samples(self.root, Split(split).value)

    def __getitem__(self, index: int) -> ImageItem:
        """The image through the shared decoder; a defect image without a mask gets an empty mask
        (a batch cannot mix masks and None) and keeps ``mask_path == ""``, which is how
        :mod:`flows.model.evaluate` leaves it out of pixel metrics."""
        sample = self.samples.iloc[index]
        pixels = torch.from_numpy(decode_image(sample.image_path)).permute(2, 0, 1)
        image = TvImage(pixels.float() / 255.0)
        gt_mask = None
        if self.task == "segmentation":
            if sample.mask_path:
                gt_mask = read_mask(sample.mask_path, as_tensor=True)
            else:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
        if self.augmentations:
            if gt_mask is None:
                image = self.augmentations(image)
            else:
                image, gt_mask = self.augmentations(image, gt_mask)
        return ImageItem(image=image, gt_mask=gt_mask, gt_label=torch.tensor(int(sample.label_index)),
                         image_path=sample.image_path, mask_path=sample.mask_path)


class MVTecLayout(AnomalibDataModule):
    """Datamodule for one product line stored in MVTec AD layout (train/test/ground_truth).

    ``val_split_mode`` None: the ``validation/`` folder when the line has one (FROM_DIR), else the
    test split as validation (anomalib's default, which lets thresholds see the test images).
    """

    def __init__(
        self,
        root: str | Path,
        name: str | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        val_split_mode: ValSplitMode | str | None = None,
        seed: int | None = None,
        **kwargs,  # augmentations, passed to AnomalibDataModule
    ) -> None:
        root = Path(root)
        if val_split_mode is None:
            has_validation = (root / "validation").is_dir()
            val_split_mode = ValSplitMode.FROM_DIR if has_validation else ValSplitMode.SAME_AS_TEST
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            test_split_mode=TestSplitMode.FROM_DIR,
            val_split_mode=val_split_mode,
            seed=seed,
            **kwargs,
        )
        self.root = root
        self._name = name or self.root.name
        self.category = self._name

    @property
    def name(self) -> str:
        return self._name

    def train_dataloader(self) -> DataLoader:
        """The training images in listing order: a Gaussian fit needs no shuffling, and a fixed
        order makes the same images give a bit-identical model (float sums depend on order)."""
        return DataLoader(
            dataset=self.train_data,
            shuffle=False,
            batch_size=self.train_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )

    def _setup(self, _stage: str | None = None) -> None:
        self.train_data = MVTecLayoutDataset(self.root, Split.TRAIN)
        self.test_data = MVTecLayoutDataset(self.root, Split.TEST)
        if self.val_split_mode == ValSplitMode.FROM_DIR:
            self.val_data = MVTecLayoutDataset(self.root, Split.VAL)
