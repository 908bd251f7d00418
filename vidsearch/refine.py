"""Query-guided boxes on hit frames.

A DASR region is found without the query: its box is where the network's attention spread
from one activation peak, which often covers only part of the object or spills well past it.
At `find` time the query is known, so on each frame that will be shown the box is searched
for again, guided by the query:

1. the hit region and its surroundings (a window three times its size) are seen zoomed in, so
   that even a small object spans several cells of a finer feature layer (stride 16);
2. the query is described on that layer the same way (its box with the same surroundings, or
   a crop alone at a third of the window);
3. boxes at every cell, at a few sizes and the query's aspect ratio, are scored by how much
   more the inside resembles the query than a ring around it does (inside alone rewards boxes
   that shrink into the object; the ring term punishes cutting it); the best one is then
   grown or shrunk edge by edge while the score improves.

Ranking never changes: only boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dasr.describe import l2n, pool_boxes

ZOOM = 1.0  # the window adds this many times the box's size on every side
CENTRE_SLACK = 0.25
RING = 0.5  # the ring around a candidate is this many times its size wide
PASSES = 2


@dataclass
class Refined:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float  # inside-minus-ring similarity of the chosen box
    start_score: float  # the same for the region's own box


def refine_layer(engine) -> int:
    """The op index of the layer boxes are refined on: the last one at stride 16 or finer,
    before the descriptor layer."""
    graph = engine.graph
    h = 512
    x = torch.zeros(1, 3, h, h, device=engine.device)
    with torch.no_grad():
        values = graph.forward(x, upto=graph.feature)
    best = graph.feature
    for i in range(graph.feature, 0, -1):
        if h / values[i].shape[-2] <= 16 and graph.ops[i].nonneg:
            best = i
            break
    return best


def window_around(box, width: int, height: int, zoom: float = ZOOM) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    pad = zoom * max(bw, bh)
    return (max(0.0, x1 - pad), max(0.0, y1 - pad), min(float(width), x2 + pad), min(float(height), y2 + pad))


class Zoomed:
    """One window of an image seen at `long_side` pixels: its feature map at the refine layer."""

    def __init__(self, engine, layer: int, image: np.ndarray, window, long_side: int) -> None:
        x1, y1, x2, y2 = (int(round(v)) for v in window)
        x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
        self.origin = (x1, y1)
        crop = np.ascontiguousarray(image[y1:y2, x1:x2])
        x, (h0, w0) = engine.prepare(crop[None], long_side)
        with torch.no_grad():
            self.feats = engine.graph.forward(x, upto=layer)[layer].float()
        self.size = tuple(x.shape[-2:])
        self.scale = np.array([self.size[1] / w0, self.size[0] / h0] * 2, dtype=np.float32)
        self.pooling = engine.preset.pooling
        self.cell = w0 / self.feats.shape[-1]  # window pixels per feature cell

    def to_local(self, boxes: np.ndarray) -> np.ndarray:
        return (np.asarray(boxes, np.float32) - np.array(self.origin * 2, np.float32)) * self.scale

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        return np.asarray(boxes, np.float32) / self.scale + np.array(self.origin * 2, np.float32)

    def pool(self, local: np.ndarray) -> torch.Tensor:
        """Descriptors of boxes in window pixels, pooled as library regions are."""
        b = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(self.feats.device)
        return pool_boxes(self.feats, b, torch.zeros(len(b), dtype=torch.int64, device=b.device), self.size,
                          self.pooling)

    def sums(self, local: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (N, C), areas (N,)) of the feature map over boxes in window pixels, cells
        taken as constant: thousands of boxes at the cost of a few lookups each, from the
        integral image (bilinear between its grid points is exact for a cell-wise constant map)."""
        if not hasattr(self, "_integral"):
            f = self.feats[0]
            c, gh, gw = f.shape
            integral = torch.zeros(c, gh + 1, gw + 1, device=f.device)
            integral[:, 1:, 1:] = f.cumsum(1).cumsum(2)
            self._integral = integral[None]
        _, _, gh1, gw1 = self._integral.shape
        cells = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(self._integral.device)
        cells = cells * torch.tensor([(gw1 - 1) / self.size[1], (gh1 - 1) / self.size[0]] * 2, device=cells.device)
        x1, y1, x2, y2 = cells.unbind(1)
        corners = torch.stack([torch.stack([x2, y2], 1), torch.stack([x1, y2], 1), torch.stack([x2, y1], 1),
                               torch.stack([x1, y1], 1)], 1)  # (N, 4, 2)
        grid = corners / torch.tensor([gw1 - 1, gh1 - 1], device=cells.device) * 2 - 1
        g = torch.nn.functional.grid_sample(self._integral, grid[None], mode="bilinear", align_corners=True)[0]
        sums = (g[:, :, 0] - g[:, :, 1] - g[:, :, 2] + g[:, :, 3]).T  # (N, C)
        return sums, ((x2 - x1) * (y2 - y1)).clamp(min=1e-6)


def query_patch(engine, layer: int, image: np.ndarray, box, long_side: int) -> torch.Tensor:
    """The query on the refine layer, seen as reference windows are: its box with the same
    surroundings zoomed to `long_side`, or (box None) a crop alone at a third of it."""
    if box is None:
        h, w = image.shape[:2]
        z = Zoomed(engine, layer, image, (0, 0, w, h), max(32, long_side // 3))
        return l2n(z.pool(z.to_local(np.array([[0, 0, w, h]]))))[0]
    h, w = image.shape[:2]
    z = Zoomed(engine, layer, image, window_around(box, w, h), long_side)
    return l2n(z.pool(z.to_local(np.array([box]))))[0]


def contrast(z: Zoomed, local: np.ndarray, q: torch.Tensor) -> np.ndarray:
    """cos(inside, q) - cos(ring, q) for boxes in window coordinates (a ring cut off by the
    window's edge counts what is left of it; none left counts as no resemblance)."""
    h, w = z.size
    bw, bh = local[:, 2] - local[:, 0], local[:, 3] - local[:, 1]
    outer = local + np.stack([-RING * bw, -RING * bh, RING * bw, RING * bh], 1)
    outer[:, 0::2] = outer[:, 0::2].clip(0, w)
    outer[:, 1::2] = outer[:, 1::2].clip(0, h)
    inner, ai = z.sums(local)
    whole, ao = z.sums(outer)
    ring = whole - inner
    has_ring = (ao - ai > 1e-3).float()
    return ((l2n(inner) @ q) - (l2n(ring) @ q) * has_ring).cpu().numpy()


def _clip(local: np.ndarray, size, min_side: float) -> np.ndarray:
    h, w = size
    local = local.copy()
    local[:, 0::2] = local[:, 0::2].clip(0, w)
    local[:, 1::2] = local[:, 1::2].clip(0, h)
    local[:, 2] = np.maximum(local[:, 2], np.minimum(local[:, 0] + min_side, w))
    local[:, 0] = np.minimum(local[:, 0], local[:, 2] - min_side)
    local[:, 3] = np.maximum(local[:, 3], np.minimum(local[:, 1] + min_side, h))
    local[:, 1] = np.minimum(local[:, 1], local[:, 3] - min_side)
    return local


def _inside(centres: np.ndarray, box0_local: np.ndarray) -> np.ndarray:
    """Which centres lie within the region's box grown by CENTRE_SLACK of its size: the object
    the query matched is there, not elsewhere in the window (another player, another car)."""
    x1, y1, x2, y2 = box0_local
    sx, sy = CENTRE_SLACK * (x2 - x1), CENTRE_SLACK * (y2 - y1)
    return (centres[:, 0] >= x1 - sx) & (centres[:, 0] <= x2 + sx) & (centres[:, 1] >= y1 - sy) & \
        (centres[:, 1] <= y2 + sy)


def candidates(z: Zoomed, box0_local: np.ndarray, aspect: float | None) -> np.ndarray:
    """Boxes centred on the cells within the region's box, at sizes from a third of it to a
    little over it and at its, the query's and a square aspect ratio; plus the region's own."""
    h, w = z.size
    gh, gw = z.feats.shape[-2:]
    cy, cx = np.meshgrid((np.arange(gh) + 0.5) * h / gh, (np.arange(gw) + 0.5) * w / gw, indexing="ij")
    bw, bh = box0_local[2] - box0_local[0], box0_local[3] - box0_local[1]
    shapes = set()
    for r in {round(bw / max(bh, 1e-6), 3), round(aspect, 3) if aspect else 1.0, 1.0}:
        for s in (0.35, 0.5, 0.7, 1.0, 1.4):
            area = bw * bh * s * s
            shapes.add((np.sqrt(area * r), np.sqrt(area / r)))
    c = np.stack([cx.ravel(), cy.ravel()], 1)
    c = c[_inside(c, box0_local)]
    out = [np.concatenate([c - [sw / 2, sh / 2], c + [sw / 2, sh / 2]], 1) for sw, sh in shapes]
    return _clip(np.concatenate([box0_local[None]] + out).astype(np.float32), z.size, 2.0)


def climb(z: Zoomed, q: torch.Tensor, box: np.ndarray, score: float, box0_local: np.ndarray,
          rounds: int = 16) -> tuple[np.ndarray, float]:
    """Move each edge by ± half, then a quarter of a cell while that raises the score (and the
    box's centre stays by the region)."""
    cell = z.size[1] / z.feats.shape[-1]
    for step in (0.5 * cell, 0.25 * cell):
        for _ in range(rounds):
            moves = np.repeat(box[None], 8, 0)
            for k in range(4):
                moves[2 * k, k] -= step
                moves[2 * k + 1, k] += step
            moves = _clip(moves, z.size, 2.0)
            s = np.where(_inside((moves[:, :2] + moves[:, 2:]) / 2, box0_local), contrast(z, moves, q), -np.inf)
            best = int(np.argmax(s))
            if s[best] <= score + 1e-4:
                break
            box, score = moves[best], float(s[best])
    return box, score


def refine_box(engine, layer: int, frame: np.ndarray, q: torch.Tensor, box0, aspect: float | None = None) -> Refined:
    """The query-guided box on one frame (full resolution, upright): `q` the query on the
    refine layer (query_patch), `box0` the hit region's box in frame pixels, `aspect` the query
    object's width / height."""
    h, w = frame.shape[:2]
    box, start = np.asarray(box0, np.float32), None
    for _ in range(PASSES):  # each pass zooms in around the last one's box
        z = Zoomed(engine, layer, frame, window_around(box, w, h), engine.preset.long_side)
        local0 = _clip(z.to_local(box[None]), z.size, 2.0)[0]
        cands = candidates(z, local0, aspect)
        scores = contrast(z, cands, q)
        start = float(scores[0]) if start is None else start
        best = int(np.argmax(scores))
        local, score = climb(z, q, cands[best], float(scores[best]), local0)
        box = z.to_frame(local[None])[0]
    return Refined(tuple(float(v) for v in box), score, start)
