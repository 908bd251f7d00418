"""Several views of one frame, so that small objects cover feature cells.

Level 1 is the whole frame at the preset's long side (the paper's single view). Level n is an
n×n grid of overlapping tiles, each seen at the long side, i.e. the frame at about n times the
scale. A level is used for a frame only where its tiles need no more than `max_upscale`
enlargement. Enlarging adds no detail, but the network describes on a grid 32 px apart: a 20-px
object in a 640-px frame only covers feature cells once its tile is enlarged (measured in
bench/RESULTS.md). Regions of every view are mapped back to frame pixels and merged by NMS; each
keeps its level. A whole-frame region per frame gives shot-level queries something to match.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from ..config import Preset

if TYPE_CHECKING:
    import torch

KIND_REGION, KIND_FRAME = 0, 1  # a salient region; the whole frame


@dataclass(frozen=True)
class View:
    level: int  # 1 = the whole frame; n = a tile of the n×n grid
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the pixels of the frame as given
    # the tile's core, in the same pixels: the part nearer its own centre than a neighbour's
    # (up to the middle of each strip it shares; the box itself at the frame's edges); None: the box
    core: tuple[float, float, float, float] | None = None

    def core_fractions(self) -> tuple[float, float, float, float]:
        """The core as fractions of the box's width and height, x1, y1, x2, y2."""
        if self.core is None:
            return (0.0, 0.0, 1.0, 1.0)
        x1, y1, x2, y2 = self.box
        w, h = x2 - x1, y2 - y1
        c = self.core
        return ((c[0] - x1) / w, (c[1] - y1) / h, (c[2] - x1) / w, (c[3] - y1) / h)


def level_factor(level: int, overlap: float) -> float:
    """How many tile widths the frame spans at this level: n tiles overlapping by `overlap`."""
    return level - (level - 1) * overlap


def usable_levels(width: int, height: int, preset: Preset) -> list[int]:
    """The preset's levels this frame size gets (level 1 always)."""
    native = max(width, height)
    return sorted({1} | {n for n in preset.tiles
                         if native * preset.max_upscale >= preset.long_side * level_factor(n, preset.tile_overlap)})


def level_scales(width: int, height: int, preset: Preset) -> dict[int, float]:
    """Per usable level, network-input pixels per frame pixel: how large an object of this
    frame appears to the network in that level's views."""
    native = max(width, height)
    return {n: preset.long_side * level_factor(n, preset.tile_overlap) / native
            for n in usable_levels(width, height, preset)}


def decode_long_side(width: int, height: int, preset: Preset) -> int:
    """The long side to decode frames at: what the finest usable level needs, never above the
    frame's own size."""
    native = max(width, height)
    factor = max(level_factor(n, preset.tile_overlap) for n in usable_levels(width, height, preset))
    return min(native, int(np.ceil(preset.long_side * factor)))


def frame_views(width: int, height: int, preset: Preset) -> list[View]:
    """The views of a frame of this size (given in the pixels it is handed over in)."""
    views = [View(1, (0, 0, width, height))]
    for n in usable_levels(width, height, preset):
        if n == 1:
            continue
        f = level_factor(n, preset.tile_overlap)
        tw, th = int(round(width / f)), int(round(height / f))
        xs = np.linspace(0, width - tw, n).round().astype(int)
        ys = np.linspace(0, height - th, n).round().astype(int)
        cx, cy = _cores(xs, tw, width), _cores(ys, th, height)
        views += [View(n, (int(x), int(y), int(x) + tw, int(y) + th), (cx[i][0], cy[j][0], cx[i][1], cy[j][1]))
                  for j, y in enumerate(ys) for i, x in enumerate(xs)]
    return views


def _cores(starts: np.ndarray, size: int, total: int) -> list[tuple[float, float]]:
    """Along one axis, each tile's core: from the middle of the strip it shares with the tile
    before to the middle of the one it shares with the tile after (the frame's edge at the ends)."""
    n = len(starts)
    return [(0.0 if i == 0 else float(starts[i] + starts[i - 1] + size) / 2.0,
             float(total) if i == n - 1 else float(starts[i + 1] + starts[i] + size) / 2.0) for i in range(n)]


def merge_views(boxes: torch.Tensor, scores: torch.Tensor, frame: torch.Tensor, kind: torch.Tensor,
                iou: float | None) -> torch.Tensor:
    """Indices kept when regions of all views of a frame are merged: NMS across views per frame
    (near-duplicates where tiles overlap or levels agree); whole-frame regions always stay."""
    import torch

    from .regions import nms

    salient = torch.nonzero(kind == KIND_REGION)[:, 0]
    kept = salient[nms(boxes[salient], scores[salient], frame[salient], iou)] if iou is not None else salient
    return torch.cat([kept, torch.nonzero(kind == KIND_FRAME)[:, 0]])
