"""Threshold-free pixel metrics over millions of pixels: the same numbers as anomalib's and
scikit-learn's, at the cost of sorting only what the curve can reach.

A test split of 582 images at 256 px holds 38 million pixels. anomalib's AUPRO sorts all of them,
although the curve stops at a false-positive rate of 0.3: only the background pixels above the
background's 70th percentile, and the defect pixels above them, can move it. :class:`AUPRO` sorts
those alone and accumulates them exactly as anomalib does (same float32 sums, same tie handling,
same interpolation at the limit). :func:`auroc` is the Mann-Whitney form of the ROC area (ties
count half), which equals scikit-learn's trapezoidal area, from one sort instead of a curve.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from anomalib.metrics.aupro import _AUPRO
from torchmetrics.utilities.data import dim_zero_cat


class AUPRO(_AUPRO):
    """anomalib's AUPRO (per-region overlap up to ``fpr_limit``, normalised); its PRO curve is
    computed from the pixels at or above the score at which the false-positive rate passes the
    limit."""

    def perform_cca(self) -> torch.Tensor:
        """anomalib's region labels (OpenCV's 8-connected components, numbered on from image to
        image), in one pass per image instead of one per region."""
        masks = dim_zero_cat(self.target).cpu().numpy().astype(np.uint8)
        regions = np.zeros(masks.shape, dtype=np.int64)
        offset = 0
        for index, mask in enumerate(masks):
            count, components = cv2.connectedComponents(mask)
            regions[index] = np.where(components > 0, components + offset, 0)
            offset += count - 1
        return torch.from_numpy(regions)

    def compute_pro(self, cca: torch.Tensor, preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = cca.reshape(-1).long()
        scores = preds.reshape(-1).float()
        background = labels == 0
        n_background = int(background.sum())
        region_sizes = torch.bincount(labels).float()
        n_regions = int((region_sizes[1:] > 0).sum())
        limit = float(self.fpr_limit)
        if n_background == 0 or n_regions == 0:
            return torch.tensor([0.0, limit]), torch.tensor([0.0, 0.0])
        # the background pixel whose turn takes the false-positive rate past the limit (with a
        # margin for float32's rounding of the rate), and every pixel scored at or above it: the
        # curve up to the limit and the point after it
        passing = math.floor(limit * n_background * 1.001) + 1
        if passing <= n_background:
            cut = torch.kthvalue(scores[background], n_background - passing + 1).values
            reached = scores >= cut
            labels, scores, background = labels[reached], scores[reached], background[reached]
        order = torch.argsort(scores, descending=True)
        fp_change = background.float()[order]
        pro_change = torch.zeros_like(scores)
        pro_change[~background] = 1.0 / region_sizes[labels[~background]]
        fpr = (torch.cumsum(fp_change, 0) / n_background).clamp_(max=1.0)
        pro = (torch.cumsum(pro_change[order], 0) / n_regions).clamp_(max=1.0)
        sorted_scores = scores[order]
        last_of_tie = torch.ones_like(sorted_scores, dtype=torch.bool)
        last_of_tie[:-1] = sorted_scores[:-1] != sorted_scores[1:]
        fpr = torch.cat([torch.zeros(1), fpr[last_of_tie]])
        pro = torch.cat([torch.zeros(1), pro[last_of_tie]])
        last = int((fpr <= limit).nonzero()[-1])
        if fpr[last] < limit and last + 1 < len(fpr):  # interpolated at the limit, as anomalib does
            step = (pro[last + 1] - pro[last]) * (limit - fpr[last]) / (fpr[last + 1] - fpr[last])
            fpr = torch.cat([fpr[: last + 1], torch.tensor([limit])])
            return fpr, torch.cat([pro[: last + 1], (pro[last] + step)[None]])
        return fpr[: last + 1], pro[: last + 1]


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half), in float64."""
    labels = torch.as_tensor(np.asarray(labels)).bool().flatten()
    scores = torch.as_tensor(np.asarray(scores)).flatten()
    n_positive = int(labels.sum())
    n_negative = len(labels) - n_positive
    if not n_positive or not n_negative:
        raise ValueError("AUROC needs both positive and negative samples")
    sorted_scores, order = torch.sort(scores)
    _, tie, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0, dtype=torch.float64)
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based rank, averaged over each run of ties
    rank_sum = float(mean_rank[tie][labels[order]].sum())
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
