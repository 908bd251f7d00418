"""Peaks on the activation map, seeds for back-propagation, map -> ellipse -> box, and NMS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms


def find_peaks(mean_map: torch.Tensor, mode: str, max_peaks: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of X̄ (h, w) -> (positions (N, 2) as (row, col), scores (N,)), best first.

    local_max: 3x3 local maxima (DASR). local_max_official: 3x3 local maxima >= mean(X̄) with the
    border rows/columns dropped (released code). above_mean: every position above mean(X̄) (DASR*).
    """
    h, w = mean_map.shape
    if mode == "above_mean":
        keep = mean_map > mean_map.mean()
    else:
        pooled = F.max_pool2d(mean_map[None, None], 3, stride=1, padding=1)[0, 0]
        keep = mean_map >= pooled
        if mode == "local_max_official":
            keep &= mean_map >= mean_map.mean()
            border = torch.zeros_like(keep)
            border[1 : h - 1, 1 : w - 1] = True
            keep &= border
    pos = keep.nonzero()
    if pos.numel() == 0:  # flat map: use the global maximum so every frame gets a region
        flat = int(mean_map.argmax())
        pos = torch.tensor([[flat // w, flat % w]], device=mean_map.device)
    scores = mean_map[pos[:, 0], pos[:, 1]]
    order = scores.argsort(descending=True)
    if max_peaks > 0:
        order = order[:max_peaks]
    return pos[order], scores[order]


def in_core(pos: torch.Tensor, scores: torch.Tensor, shape: tuple[int, int],
            core: tuple[float, float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The peaks (N, 2) (row, col) of a map of `shape` (h, w) whose cell centre lies in `core`,
    x1, y1, x2, y2 as fractions of the map (left and top edges in, right and bottom out)."""
    h, w = shape
    y = (pos[:, 0].double() + 0.5) / h
    x = (pos[:, 1].double() + 0.5) / w
    inside = (x >= core[0]) & (x < core[2]) & (y >= core[1]) & (y < core[3])
    return pos[inside], scores[inside]


def make_seeds(x: torch.Tensor, pos: torch.Tensor, mode: str, mass: float = 1.0,
               frame: torch.Tensor | None = None) -> torch.Tensor:
    """Seeds P(B) at the peak layer, one per peak: (K, C, h, w), zero but at the peak. `x` is
    one frame's peak layer (C, h, w), or with `frame` (K,) the batch's (B, C, h, w) and the
    frame of each peak.

    activations: the activations X[:, i, j] of all channels at the peak (paper).
    uniform: 1/C on every channel at the peak (the released code's mean-map gradient).
    Each seed is scaled to total `mass` (fp16 needs ~H·W to avoid underflow).
    """
    c, h, w = x.shape[-3:]
    k = pos.shape[0]
    seeds = torch.zeros(k, c, h, w, dtype=x.dtype, device=x.device)
    rows, cols = pos[:, 0], pos[:, 1]
    ar = torch.arange(k, device=x.device)
    if mode == "activations":
        vec = x[:, rows, cols].T if frame is None else x[frame, :, rows, cols]  # (K, C)
        vec = vec.clamp(min=0)
        vec = torch.where(vec.sum(1, keepdim=True) > 0, vec, torch.ones_like(vec))
    else:
        vec = torch.ones(k, c, dtype=x.dtype, device=x.device)
    vec = vec / vec.sum(1, keepdim=True) * mass
    seeds[ar, :, rows, cols] = vec
    return seeds


def maps_to_boxes(maps: torch.Tensor, threshold: str = "tau", tau: float = 0.1,
                  percentile: float = 95.0) -> torch.Tensor:
    """Maps (K, H, W) -> boxes (K, 4) as x1, y1, x2, y2 in map pixels.

    The map is normalised to [0, 1]; pixels >= τ (or >= the given percentile of the map) are
    kept; their second moments give an ellipse with semi-axes 2·√λ whose circumscribed
    rectangle is [μx ± 2σx] × [μy ± 2σy].
    """
    k, h, w = maps.shape
    m = maps.float()
    low = m.flatten(1).amin(1).view(k, 1, 1)
    high = m.flatten(1).amax(1).view(k, 1, 1)
    norm = (m - low) / (high - low).clamp(min=1e-12)
    if threshold == "tau":
        mask = norm >= tau
    else:
        # The percentile with linear interpolation, as numpy.percentile computes it.
        flat = norm.flatten(1)
        pos = percentile / 100.0 * (h * w - 1)
        lo, hi = int(pos), min(int(pos) + 1, h * w - 1)
        v_lo = flat.kthvalue(lo + 1, dim=1).values
        v_hi = flat.kthvalue(hi + 1, dim=1).values
        cut = (v_lo + (v_hi - v_lo) * (pos - lo)).view(k, 1, 1)
        mask = norm >= cut
    mask = mask.float()
    ys = torch.arange(h, device=maps.device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=maps.device, dtype=torch.float32) + 0.5
    count = mask.sum((1, 2)).clamp(min=1)
    col_mass = mask.sum(1)  # (K, W)
    row_mass = mask.sum(2)  # (K, H)
    mx = (col_mass * xs).sum(1) / count
    my = (row_mass * ys).sum(1) / count
    vx = (col_mass * xs**2).sum(1) / count - mx**2
    vy = (row_mass * ys**2).sum(1) / count - my**2
    # Half extents 2σ, at least half a pixel so a one-pixel region still covers its pixel.
    hx = (2 * vx.clamp(min=0).sqrt()).clamp(min=0.5)
    hy = (2 * vy.clamp(min=0).sqrt()).clamp(min=0.5)
    boxes = torch.stack([mx - hx, my - hy, mx + hx, my + hy], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def cell_fractions(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Maps (K, H, W) -> their mean over each cell of a (h, w) grid (the peak layer's), as a
    fraction of each map's largest cell: (K, h, w) in [0, 1]."""
    cells = F.adaptive_avg_pool2d(maps.float()[:, None], tuple(grid))[:, 0]
    return cells / cells.flatten(1).amax(1).clamp(min=1e-20)[:, None, None]


def nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float | None) -> torch.Tensor:
    """Indices kept by NMS within each group (frame), best score first; all when iou is None."""
    if iou is None:
        return torch.arange(boxes.shape[0], device=boxes.device)
    return batched_nms(boxes.float(), scores.float(), groups, iou)
