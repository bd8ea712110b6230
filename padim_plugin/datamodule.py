"""An anomalib datamodule for one product in MVTec AD layout, with any common image format.

anomalib's MVTecAD reads only .png and pairs masks with images by sort order; inspection data
comes as jpg, bmp or tif too, so here masks are paired by name (``<stem>_mask.<ext>`` or
``<stem>.<ext>`` under ``ground_truth/<defect>/``) and a missing mask is an error naming the image.

Layout: ``train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>``.
"""

from __future__ import annotations

from pathlib import Path

from anomalib.data import AnomalibDataModule
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName, Split, TestSplitMode, ValSplitMode
from pandas import DataFrame

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
NORMAL = "good"


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def find_mask(root: Path, defect: str, stem: str) -> Path | None:
    """The ground-truth mask of ``test/<defect>/<stem>.*``, or None."""
    folder = root / "ground_truth" / defect
    for name in (f"{stem}_mask", stem):
        for extension in IMAGE_EXTENSIONS:
            candidate = folder / f"{name}{extension}"
            if candidate.is_file():
                return candidate
    return None


def mvtec_samples(root: str | Path, split: Split | str | None = None) -> DataFrame:
    """One row per image of an MVTec-layout folder: image_path, split, label, label_index, mask_path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    rows = []
    for split_name in (Split.TRAIN.value, Split.TEST.value):
        split_dir = root / split_name
        if not split_dir.is_dir():
            continue
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            abnormal = label_dir.name != NORMAL
            for image in sorted(p for p in label_dir.iterdir() if is_image(p)):
                mask = find_mask(root, label_dir.name, image.stem) if abnormal else None
                if abnormal and mask is None:
                    msg = f"{image}: no mask in {root / 'ground_truth' / label_dir.name}"
                    raise FileNotFoundError(msg)
                rows.append({
                    "path": str(root),
                    "split": split_name,
                    "label": label_dir.name,
                    "image_path": str(image),
                    "label_index": int(LabelName.ABNORMAL if abnormal else LabelName.NORMAL),
                    "mask_path": str(mask) if mask else "",
                })
    samples = DataFrame(rows, columns=["path", "split", "label", "image_path", "label_index", "mask_path"])
    if samples.empty:
        raise FileNotFoundError(f"no images under {root}/train or {root}/test")
    samples.attrs["task"] = "segmentation" if (samples.mask_path != "").any() else "classification"
    if split is not None:
        split_value = split.value if isinstance(split, Split) else split
        samples = samples[samples.split == split_value].reset_index(drop=True)
    return samples


class MVTecLayoutDataset(AnomalibDataset):
    """The images of one split of an MVTec-layout folder."""

    def __init__(self, root: str | Path, split: Split | str, augmentations=None) -> None:  # noqa: ANN001
        super().__init__(augmentations=augmentations)
        self.root = Path(root)
        self.samples = mvtec_samples(self.root, split)


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
