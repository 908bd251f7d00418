"""Region descriptors: pool the feature map inside each box, then L2 · PCA-whiten · L2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align, roi_pool


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
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    return F.normalize(x, dim=-1, eps=eps)


@dataclass
class Whitening:
    """PCA-whitening learned on L2-normalised region descriptors."""

    mean: np.ndarray  # (D,)
    proj: np.ndarray  # (d, D): rows are eigenvectors / sqrt(eigenvalue)
    version: int = 1
    fitted_on: int = 0

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = 0, shrink: float = 1e-3, version: int = 1) -> "Whitening":
        """Fit on (N, D) L2-normalised vectors; `shrink` (relative to the mean eigenvalue)
        keeps the smallest directions from exploding when N is not much larger than D."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1]
        evals, evecs = evals[order], evecs[:, order]
        # N vectors span at most N-1 directions: the rest have no variance to whiten.
        rank = int((evals > 1e-9 * max(evals[0], 1e-12)).sum())
        keep = min(rank, max(1, x.shape[0] - 1), dims or len(evals))
        evals, evecs = evals[:keep], evecs[:, :keep]
        evals = evals.clip(min=0) + shrink * max(evals.mean(), 1e-12)
        proj = (evecs / np.sqrt(evals)).T
        return cls(mean.astype(np.float32), proj.astype(np.float32), version, int(x.shape[0]))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised -> (N, d) whitened and L2-normalised, float32."""
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.proj.T
        return l2n(y).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "proj": self.proj, "version": np.array(self.version),
                "fitted_on": np.array(self.fitted_on)}

    @classmethod
    def from_arrays(cls, a) -> "Whitening":
        return cls(a["mean"], a["proj"], int(a["version"]), int(a["fitted_on"]))
