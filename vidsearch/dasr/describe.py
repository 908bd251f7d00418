"""Region descriptors: pool the feature map inside each box, then L2 · PCA-whiten · L2."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align, roi_pool

from .whitening import l2n_np


def pool_boxes(features: torch.Tensor, boxes: torch.Tensor, frame_idx: torch.Tensor,
               image_size: tuple[int, int], mode: str = "avg") -> torch.Tensor:
    """Pool features (B, D, h, w) inside boxes (N, 4) given in input-image pixels -> (N, D).

    avg: roi_align to one bin with an adaptive sampling grid (= the mean over the box).
    max: roi_pool to one bin (= the max over the feature cells the box covers).
    """
    if boxes.shape[0] == 0:
        return features.new_zeros(0, features.shape[1])
    scale = features.shape[-2] / image_size[0]
    rois = torch.cat([frame_idx.to(boxes.dtype)[:, None], boxes], dim=1).to(features.dtype)
    if mode == "avg":
        out = roi_align(features, rois, output_size=1, spatial_scale=scale, sampling_ratio=-1, aligned=True)
    else:
        # roi_pool rounds both ends and includes the end cell: hand it the covered cell range.
        cells = boxes * scale
        start = cells[:, :2].floor()
        end = torch.maximum(cells[:, 2:].ceil(), start + 1) - 1
        rois = torch.cat([frame_idx.to(boxes.dtype)[:, None], start, end], dim=1).to(features.dtype)
        out = roi_pool(features, rois, output_size=1, spatial_scale=1.0)
    return out.flatten(1)


def l2n(x: torch.Tensor | np.ndarray, eps: float = 1e-12):
    if isinstance(x, np.ndarray):
        return l2n_np(x, eps)
    return F.normalize(x, dim=-1, eps=eps)
