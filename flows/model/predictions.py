"""Raw outputs of a model on one role of a line (validation for thresholds, test for metrics).

Scores are the model's raw ones (its post-processor is bypassed), so thresholds and
threshold-free metrics never depend on a normalisation learnt elsewhere. Given the line's kept
features (flows.model.features), the backbone runs only on images whose maps are not kept yet.
Pixel ground truth is known for normal images (empty by definition) and for defect images with a
mask; defect images labelled per image only take no part in pixel-level numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.data import Batch
from anomalib.data.utils.image import read_mask

from padim_plugin import StreamingPadim
from padim_plugin.datamodule import MVTecLayoutDataset
from padim_plugin.scoring import image_size

from ..config import LineParams
from .build import build_datamodule, engine
from .features import KeptFeatures, ModelFeatures, image_digest
from .progress import ImageProgress

PIXEL_STRIDE = 2  # every 4th pixel of each map: pixel-level numbers in bounded memory


@dataclass
class ScoredBatch:
    """One batch's raw outputs as evaluation reads them. No images: they are what memory would
    hold most of, and the figures load the few they show."""

    image_path: list[str]
    gt_label: torch.Tensor  # (B,) 0 normal, 1 defect
    gt_mask: torch.Tensor | None  # (B, H, W) int, None when the line has no masks at all
    pred_score: torch.Tensor  # (B,) raw image scores
    anomaly_map: torch.Tensor  # (B, 1, H, W) raw maps


@dataclass
class Predictions:
    """One role's raw outputs; ``batches`` keep the maps for the figures."""

    batches: list[ScoredBatch]
    image_paths: list[str]
    labels: np.ndarray  # (N,) 0 normal, 1 defect
    scores: np.ndarray  # (N,) raw image scores
    has_ground_truth: np.ndarray  # (N,) bool: normal, or a defect with a mask
    pixel_labels: np.ndarray  # (M,) subsampled pixels of images with ground truth
    pixel_scores: np.ndarray  # (M,)
    map_range: tuple[float, float]  # min and max over every map

    @property
    def pixel_defect_images(self) -> int:
        return int((self.has_ground_truth & (self.labels == 1)).sum())


def predict_role(model: StreamingPadim, params: LineParams, data_path: Path, role: str,
                 work_dir: Path, kept: KeptFeatures | None = None) -> Predictions:
    """Score every image of ``role`` ("validation" or "test") with the post-processor bypassed;
    from the ``kept`` features where they are, keeping those of the others."""
    datamodule = build_datamodule(params, data_path)
    datamodule.setup()
    loader = datamodule.val_dataloader() if role == "validation" else datamodule.test_dataloader()
    samples = loader.dataset.samples
    has_mask = dict(zip(samples.image_path, samples.mask_path != "", strict=True))
    progress = ImageProgress(params.name, f"{role} images scored", len(samples))
    post_processor, model.post_processor = model.post_processor, None
    try:
        if kept is None:
            batches = [_scored(batch) for batch in engine(work_dir, progress).predict(model=model,
                                                                                       dataloaders=loader)]
        else:
            batches = score_from_kept_features(model, loader.dataset, params, kept.for_model(model), progress)
    finally:
        model.post_processor = post_processor
    labels, scores, ground_truth, pixel_labels, pixel_scores, paths = [], [], [], [], [], []
    low, high = np.inf, -np.inf
    for batch in batches:
        batch_labels = batch.gt_label
        maps = batch.anomaly_map.squeeze(1)
        if batch.gt_mask is not None:
            masks = batch.gt_mask
            known = torch.tensor([label == 0 or has_mask[path] for label, path in
                                  zip(batch_labels.tolist(), batch.image_path, strict=True)])
        else:  # no mask anywhere in the line: only normal images have known (empty) masks
            masks = torch.zeros_like(maps, dtype=torch.int32)
            known = batch_labels == 0
        labels.append(batch_labels)
        scores.append(batch.pred_score)
        ground_truth.append(known)
        paths += list(batch.image_path)
        low, high = min(low, float(maps.min())), max(high, float(maps.max()))
        pixel_scores.append(maps[known][:, ::PIXEL_STRIDE, ::PIXEL_STRIDE].flatten())
        pixel_labels.append(masks[known][:, ::PIXEL_STRIDE, ::PIXEL_STRIDE].flatten())
    return Predictions(
        batches=batches,
        image_paths=paths,
        labels=torch.cat(labels).numpy(),
        scores=torch.cat(scores).numpy(),
        has_ground_truth=torch.cat(ground_truth).numpy().astype(bool),
        pixel_labels=torch.cat(pixel_labels).numpy(),
        pixel_scores=torch.cat(pixel_scores).numpy(),
        map_range=(low, high),
    )


def _scored(batch: Batch) -> ScoredBatch:
    """The Engine's batch without its images."""
    masks = None if batch.gt_mask is None else batch.gt_mask.squeeze(1).cpu().int()
    return ScoredBatch(list(batch.image_path), batch.gt_label.cpu().int(), masks,
                       batch.pred_score.flatten().cpu(), batch.anomaly_map.cpu())


def score_from_kept_features(model: StreamingPadim, dataset: MVTecLayoutDataset, params: LineParams,
                             kept: ModelFeatures, progress: ImageProgress) -> list[ScoredBatch]:
    """What the Engine's predict loop gives, with only the images whose maps are not kept read,
    pre-processed and run through the backbone (their maps are kept then); the others' masks are
    read and resized as the Engine's would be."""
    core = model.model.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    core.to(device)
    size = image_size(model)
    samples, batches = dataset.samples, []
    progress.start()
    with torch.no_grad():
        for start in range(0, len(samples), params.data.eval_batch_size):
            rows = samples.iloc[start : start + params.data.eval_batch_size]
            digests = [image_digest(Path(path)) for path in rows.image_path]
            maps = [kept.get(digest) for digest in digests]
            missing = [index for index, found in enumerate(maps) if found is None]
            if missing:
                images = torch.stack([dataset[start + index].image for index in missing])
                fresh = core.features(model.pre_processor.transform(images).to(device))
                for row, index in enumerate(missing):
                    maps[index] = [layer[row].cpu() for layer in fresh]
                    kept.keep(digests[index], maps[index])
            features = [torch.stack([image_maps[layer] for image_maps in maps]).to(device)
                        for layer in range(len(maps[0]))]
            scored = core.score_features(features, size)
            masks = None
            if dataset.task == "segmentation":
                masks = torch.stack([_mask(path, dataset, model, size) for path in rows.mask_path])
            batches.append(ScoredBatch(list(rows.image_path), torch.tensor(rows.label_index.to_numpy()).int(),
                                       masks, scored.pred_score.flatten().cpu(), scored.anomaly_map.cpu()))
            progress.advance(len(rows))
    progress.end()
    return batches


def _mask(path: str, dataset: MVTecLayoutDataset, model: StreamingPadim,
          size: tuple[int, int]) -> torch.Tensor:
    """An image's mask as the Engine's batch has it: read, resized by the dataset, then by the
    model's pre-processor; empty when the image has none."""
    if not path:
        return torch.zeros(size, dtype=torch.int32)
    mask = read_mask(path, as_tensor=True)
    if dataset.augmentations:
        mask = dataset.augmentations(mask)
    return model.pre_processor.transform(mask).int()
