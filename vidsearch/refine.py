"""Query-guided boxes on hit frames.

A DASR region is found without the query: its box is where the network's attention spread
from one activation peak, which often covers only part of the object or spills well past it
(on instance-dev its IoU with the object is 0.5 or more only 8 % of the time). At `find` time
the query is known, so on each frame that will be shown the box is looked for again:

- the query's box is cut from a finer feature layer (stride 16) as a small grid of cells, a
  template that keeps the object's layout rather than averaging it away;
- around the hit region, the frame is seen at several zooms (the object taken as a quarter to
  twice the region's size), and the template is slid over each: the normalised correlation
  of template and window (the cosine of their cells, stacked) peaks where the object is, at the
  zoom that gives it the template's size;
- the box is the query's box, moved there and scaled by that zoom; where it goes at that zoom is
  chosen with the cells' colour too (COLOUR), which the cells alone barely see;
- then the whole frame is searched at that size: where the template (colour included) matches
  better elsewhere, the box moves there. The region that made the frame a hit can lie on a
  lookalike (another walker, another player) while the object is elsewhere in the frame; the
  size is taken near the region because at other sizes background texture can correlate as well
  as the object.

This is training-free template matching on the backbone's own features (the idea of Siamese
trackers, without their training). Measured choices and numbers: bench/RESULTS.md.

The match is also a second opinion on the ranking (re-ranking, `find --rerank N`): a region
vector averages a box that, for an object of a few dozen pixels, is mostly background, while
the template keeps the object's layout on a finer map. The first N segments are ordered by
their match (the best of their RERANK_LOOKS best hits'), above the rest (bench/RESULTS.md:
small objects in other scenes). Only the match near the region ranks, so `find` runs the
whole-frame pass (move_anywhere) later, on the segments verification keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TEMPLATE_CELLS = 6  # the query's box spans this many cells on its long side
ZOOMS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)  # object size / region size, tried
# Near the box of a hit a sample away, which is the object's own, its size is about known: only
# the zooms around it are tried (then half steps around the best, as always). The whole range
# lets a part of the object, or a larger patch of texture, outscore it (bench/RESULTS.md).
BESIDE_ZOOMS = (0.7, 1.0, 1.4)
# A frame matched again beside a neighbour can set right the frame next to it, whose other
# neighbour agreed with its wrong size: rounds of that per refine pass (each only where a box
# changed). Measured on generated 1080p props (bench/RESULTS.md): the second round set right
# boxes the first had left; more rounds decode the frames once more each.
BESIDE_ROUNDS = 2
CONTEXT = 1.0  # the searched window adds this many region sizes on every side
MAX_SIDE = 640  # network pixels: a window is cut down around the region past this
# The whole frame is matched (a box may leave its hit region) up to this many network pixels
# (a cost cap: 1.5 s for 7.6 Mpx on the 2-core CPU), seen in pieces of at most PIECE_PIXELS
# (about 3 GB at the refine layer) whose inner edges lose EDGE_CELLS cells to padding. Pieces
# bound memory past the cap's size; below it one piece costs less (no overlaps: 4 Mpx pieces
# made a 7.6 Mpx pass 1.95x slower, bench/RESULTS.md).
ANYWHERE_PIXELS = 8_000_000
PIECE_PIXELS = 8_000_000
EDGE_CELLS = 2
RERANKED = 10.0  # re-ranked scores (a correlation, at most 1) are offset by this, above any cosine
# Hits re-ranked unless told otherwise (find --rerank, eval :rerank). Measured (bench/RESULTS.md):
# the first 20 lift small objects in other scenes and keep instance-dev's mAP (0.983 vs 0.981);
# the first 100 cost instance-dev 0.03 (background texture can match the template where the
# region score had ranked the frame low), so 20 on any device.
RERANK_DEPTH = 20
# Hits of each re-ranked segment matched, best region score first; the segment's match is the
# best of them. A segment's best hit can be a region beside the object on a frame that shows
# it (a 40 px prop in 1080p often has no region of its own), so one look can miss an object
# another frame's hit finds. Measured (bench/RESULTS.md): 2 looks keep more right segments on
# generated 1080p props and drop wrong ones on instance-dev; a third added nothing.
RERANK_LOOKS = 2
# Colour in the box's place: the backbone's cells barely tell a red ball from a blue one, or one
# walker from another in a different jacket. Where the box goes, at the size and by the score the
# cells alone give, is chosen with each cell's mean chroma too (CIELAB a*, b*; 0 for grey, so grey
# adds nothing), scaled so that a cell of chroma 100 (a saturated colour) weighs COLOUR times the
# template's mean feature cell. The score, which ranks and verifies, and the size stay the cells':
# colour added to the score lowered the background it is judged against and let grey lookalikes
# through (bench/RESULTS.md). 0: colour not used.
COLOUR = 1.0


@dataclass
class Refined:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float  # the template's best normalised correlation on the backbone's cells (ranks the hit)
    zoom: float  # object size / region size found
    moved: bool = False  # the box left the hit region for a better match elsewhere in the frame
    side: float = 0.0  # the object's long side in frame pixels as matched, before the box is cut to the frame
    template: int = -1  # which of the query's templates matched (-1: none fitted)
    fit: float = -1.0  # the correlation with colour (COLOUR) at the box's place, which chose the place


@dataclass
class Template:
    cells: torch.Tensor  # (1, C, th, tw), unit norm over all of it
    size: tuple[float, float]  # the query box's width, height in query pixels
    scale: float  # network pixels per query pixel it was cut at
    offset: tuple[float, float]  # where the box starts, in cells from the template's first cell (x, y)
    chroma: torch.Tensor | None = None  # (1, 2, th, tw): the cells' chroma, in `cells`' units at `colour`
    colour: float = 0.0  # a window's chroma is weighed by this against its feature cells


def refine_layer(engine) -> int:
    """The op index boxes are refined on: the last non-negative layer at stride 16 or finer,
    before the descriptor layer."""
    graph = engine.graph
    x = torch.zeros(1, 3, 512, 512, device=engine.device)
    with torch.no_grad():
        values = graph.forward(x, upto=graph.feature)
    for i in range(graph.feature, 0, -1):
        if 512 / values[i].shape[-2] <= 16 and graph.ops[i].nonneg:
            return i
    return graph.feature


def _stride(engine, layer: int) -> float:
    known = engine.__dict__.setdefault("_refine_strides", {})  # one probe per engine and layer
    if layer not in known:
        x = torch.zeros(1, 3, 256, 256, device=engine.device)
        with torch.no_grad():
            known[layer] = 256 / engine.graph.output(x, layer).shape[-1]
    return known[layer]


def _features(engine, layer: int, image: np.ndarray, window, scale: float):
    """The window of the image seen at `scale` network pixels per image pixel: its feature map,
    its chroma on the same cells (_chroma) and the network pixels per image pixel actually used
    (x, y)."""
    x1, y1, x2, y2 = (int(round(v)) for v in window)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    crop = np.ascontiguousarray(image[y1:y2, x1:x2])
    long_side = max(32, int(round(max(crop.shape[:2]) * scale)))
    x, _ = engine.prepare(crop[None], long_side)
    with torch.no_grad():
        f = engine.graph.output(x, layer).float()
    return f, _chroma(crop, f.shape[-2:], f.device), x.shape[-1] / crop.shape[1], x.shape[-2] / crop.shape[0]


def _chroma(image: np.ndarray, shape, device) -> torch.Tensor:
    """The image's mean CIELAB a*, b* over each of `shape`'s cells, divided by 100: (1, 2, h, w)."""
    rgb = torch.tensor(image, device=device).permute(2, 0, 1)[None].float() / 255  # a copy: frames can be read-only
    rgb = F.adaptive_avg_pool2d(rgb, tuple(shape)) if rgb.shape[-2] >= shape[0] and rgb.shape[-1] >= shape[1] \
        else F.interpolate(rgb, size=tuple(shape), mode="bilinear", align_corners=False)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.tensor([[0.4124 / 0.9505, 0.3576 / 0.9505, 0.1805 / 0.9505],
                      [0.2126, 0.7152, 0.0722],
                      [0.0193 / 1.089, 0.1192 / 1.089, 0.9505 / 1.089]], device=device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin).clamp(min=0)
    d = 6 / 29
    g = torch.where(xyz > d ** 3, xyz.pow(1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack((5.0 * (g[:, 0] - g[:, 1]), 2.0 * (g[:, 1] - g[:, 2])), 1)  # (500, 200) / 100


def make_template(engine, layer: int, image: np.ndarray, box=None) -> Template:
    """The query as a template: its box (None: the whole image, a crop) seen so that it spans
    TEMPLATE_CELLS cells, and the cells it covers."""
    h, w = image.shape[:2]
    box = (0.0, 0.0, float(w), float(h)) if box is None else tuple(float(v) for v in box)
    bw, bh = box[2] - box[0], box[3] - box[1]
    stride = _stride(engine, layer)
    scale = TEMPLATE_CELLS * stride / max(bw, bh, 1.0)
    pad = 0.5 * max(bw, bh)  # a little of its surroundings, as the cells at its edge see them
    window = (max(0.0, box[0] - pad), max(0.0, box[1] - pad), min(float(w), box[2] + pad), min(float(h), box[3] + pad))
    f, chroma, sx, sy = _features(engine, layer, image, window, scale)
    cells = []
    for lo, hi, origin, s, n in ((box[1], box[3], window[1], sy, f.shape[-2]), (box[0], box[2], window[0], sx, f.shape[-1])):
        start = (lo - origin) * s / stride
        a = min(n - 1, max(0, int(round(start))))
        b = min(n, max(a + 1, int(round((hi - origin) * s / stride))))
        cells.append((a, b, start - a))
    (a, b, oy), (c, d, ox) = cells
    t = f[:, :, a:b, c:d]
    weight = COLOUR * float(t.norm(dim=1).mean())
    norm = t.norm().clamp(min=1e-12)
    return Template(t / norm, (bw, bh), (sx + sy) / 2, (ox, oy), weight * chroma[:, :, a:b, c:d] / norm, weight)


def _subcell(ncc: torch.Tensor, r: int, c: int) -> tuple[float, float]:
    """The peak's position to a fraction of a cell: a parabola through it and its neighbours."""
    def vertex(a: float, b: float, d: float) -> float:
        curve = a - 2 * b + d
        return float(np.clip(0.5 * (a - d) / curve, -0.5, 0.5)) if curve < -1e-9 else 0.0

    h, w = ncc.shape
    dy = vertex(float(ncc[r - 1, c]), float(ncc[r, c]), float(ncc[r + 1, c])) if 0 < r < h - 1 else 0.0
    dx = vertex(float(ncc[r, c - 1]), float(ncc[r, c]), float(ncc[r, c + 1])) if 0 < c < w - 1 else 0.0
    return r + dy, c + dx


def _ncc(f: torch.Tensor, chroma: torch.Tensor, t: Template) -> tuple[torch.Tensor, torch.Tensor]:
    """The template's normalised correlation at every place of a feature map (rows, cols), on
    the feature cells alone and with their chroma appended (the same where COLOUR is 0)."""
    th, tw = t.cells.shape[-2:]
    ones = torch.ones(1, 1, th, tw, device=f.device)
    num = F.conv2d(f, t.cells)[0, 0]
    den = F.conv2d(f.pow(2).sum(1, keepdim=True), ones)[0, 0]
    cells = num / den.sqrt().clamp(min=1e-12)
    if t.chroma is None or t.colour <= 0:
        return cells, cells
    num = num + t.colour * F.conv2d(chroma, t.chroma)[0, 0]
    den = den + t.colour ** 2 * F.conv2d(chroma.pow(2).sum(1, keepdim=True), ones)[0, 0]
    return cells, num / (den * (1 + t.chroma.pow(2).sum())).sqrt().clamp(min=1e-12)


def _best(ncc: tuple[torch.Tensor, torch.Tensor], t: Template, win, sx: float, sy: float, stride: float, shape,
          zoom: float) -> Refined:
    """The box at the peak of the correlation with colour: the query's box, its top-left cell
    there, scaled; its score the best correlation of the cells alone (the pair _ncc gives)."""
    h, w = shape[:2]
    cells, ncc = ncc
    r, c = divmod(int(torch.argmax(ncc)), ncc.shape[1])
    fit = float(ncc[r, c])
    r, c = _subcell(ncc, r, c)
    k = t.scale / ((sx + sy) / 2)  # frame pixels per query pixel
    bx = win[0] + (c + t.offset[0]) * stride / sx
    by = win[1] + (r + t.offset[1]) * stride / sy
    box = (max(0.0, bx), max(0.0, by), min(float(w), bx + t.size[0] * k), min(float(h), by + t.size[1] * k))
    return Refined(box, float(cells.max()), zoom, side=max(t.size) * k, fit=fit)


def _match(engine, layer: int, frame: np.ndarray, t: Template, box0, zoom: float, stride: float) -> Refined | None:
    """The template's best place around box0 with the object taken as `zoom` times its size."""
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box0)
    size0 = max(x2 - x1, y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    th, tw = t.cells.shape[-2:]
    scale = TEMPLATE_CELLS * stride / (zoom * size0)  # the object at the template's size
    half = min((0.5 + CONTEXT) * size0, MAX_SIDE / scale / 2)
    win = (max(0.0, cx - half), max(0.0, cy - half), min(float(w), cx + half), min(float(h), cy + half))
    f, chroma, sx, sy = _features(engine, layer, frame, win, scale)
    if f.shape[-2] < th or f.shape[-1] < tw:
        return None
    ncc = _ncc(f, chroma, t)
    # Only places whose box overlaps the hit region: the region is why the frame is a hit, and
    # away from it, at a zoom it does not vouch for, background texture on real footage can
    # correlate as well as the object. (refine_box then looks over the whole frame, but only at
    # the size found here.)
    k = t.scale / ((sx + sy) / 2)  # frame pixels per query pixel
    n_rows, n_cols = ncc[0].shape
    cols = (win[0] + (torch.arange(n_cols, device=f.device) + t.offset[0]) * stride / sx)
    rows = (win[1] + (torch.arange(n_rows, device=f.device) + t.offset[1]) * stride / sy)
    ok = ((rows < y2) & (rows + t.size[1] * k > y1))[:, None] & ((cols < x2) & (cols + t.size[0] * k > x1))[None, :]
    if not bool(ok.any()):
        return None
    return _best(tuple(m.masked_fill(~ok, -2.0) for m in ncc), t, win, sx, sy, stride, frame.shape, zoom)


def _pieces(w: int, h: int, scale: float, keep: float) -> list[tuple[int, int, int, int]]:
    """Windows (frame pixels) covering a w x h frame, each about PIECE_PIXELS network pixels at
    `scale` or less, neighbours overlapping by at least `keep` frame pixels."""
    side = max(np.sqrt(PIECE_PIXELS) / scale, 2.0 * keep)

    def spans(n: int) -> list[tuple[int, int]]:
        if n <= side:
            return [(0, n)]
        k = int(np.ceil((n - keep) / (side - keep)))
        step = (n - side) / (k - 1)
        return [(int(np.floor(i * step)), min(n, int(np.ceil(i * step + side)))) for i in range(k)]

    return [(x1, y1, x2, y2) for y1, y2 in spans(h) for x1, x2 in spans(w)]


def _match_anywhere(engine, layer: int, frame: np.ndarray, t: Template, found: Refined, stride: float) -> Refined | None:
    """The template's best place anywhere in the frame, with the object at the size `found`
    gave it near the hit region (its whole size: the box may be cut by the frame's edge); None
    where the frame at that size would pass ANYWHERE_PIXELS. The frame is seen in pieces of
    PIECE_PIXELS, so memory stays bounded at any frame size."""
    h, w = frame.shape[:2]
    size = max(found.side, 1.0)
    scale = TEMPLATE_CELLS * stride / size
    if h * w * scale * scale > ANYWHERE_PIXELS:
        return None
    th, tw = t.cells.shape[-2:]
    margin = EDGE_CELLS
    keep = (max(th, tw) + 2 * margin + 1) * stride / scale  # every placement lies whole, off the edge, in one piece
    best = None
    for win in _pieces(w, h, scale, keep):
        f, chroma, sx, sy = _features(engine, layer, frame, win, scale)
        if f.shape[-2] < th or f.shape[-1] < tw:
            continue
        ncc = _ncc(f, chroma, t)
        # places within `margin` cells of a piece's inner edge are the neighbouring piece's
        ok = torch.ones_like(ncc[0], dtype=torch.bool)
        rows, cols = ok.shape
        if win[1] > 0:
            ok[:margin] = False
        if win[3] < h:
            ok[max(0, rows - margin):] = False
        if win[0] > 0:
            ok[:, :margin] = False
        if win[2] < w:
            ok[:, max(0, cols - margin):] = False
        if not bool(ok.any()):
            continue
        here = _best(tuple(m.masked_fill(~ok, -2.0) for m in ncc), t, win, sx, sy, stride, frame.shape, found.zoom)
        if best is None or here.fit > best.fit:
            best = here
    return best


def refine_box(engine, layer: int, frame: np.ndarray, templates: list[Template], box0,
               anywhere: bool = True) -> Refined:
    """The query-guided box on one frame (full resolution, upright), near the hit region's
    `box0`: the best normalised correlation of any template at any zoom (ZOOMS, then half
    steps around the best). Its score is that match's, which ranks and verifies the hit; the
    box's place at that zoom is where the template fits best with colour (COLOUR). With
    `anywhere`, the box moves where that template, at that size, fits better elsewhere in the
    frame: a lookalike can hold the region (another walker, another player; measured in
    bench/RESULTS.md, "Boxes leave a region held by a lookalike")."""
    near = refine_near(engine, layer, frame, templates, box0)
    return move_anywhere(engine, layer, frame, templates, near) if anywhere else near


def same_size(side: float, box) -> bool:
    """Whether an object of long side `side` is about the size of `box` (x1, y1, x2, y2): within
    the range BESIDE_ZOOMS reaches with their half steps (0.59-1.66 times)."""
    step = np.sqrt(ZOOMS[1] / ZOOMS[0])
    long_side = max(float(box[2]) - float(box[0]), float(box[3]) - float(box[1]), 1.0)
    return BESIDE_ZOOMS[0] / step * long_side <= side <= BESIDE_ZOOMS[-1] * step * long_side


def refine_near(engine, layer: int, frame: np.ndarray, templates: list[Template], box0,
                zooms: tuple[float, ...] = ZOOMS) -> Refined:
    """refine_box without the whole-frame pass: the match near `box0` (score -1 where no
    template fits), the object tried at `zooms` times box0's size. `move_anywhere` can finish
    it later, on the same frame."""
    stride = _stride(engine, layer)
    best = Refined(tuple(float(v) for v in box0), -1.0, 1.0)
    for i, t in enumerate(templates):
        found = [_match(engine, layer, frame, t, box0, z, stride) for z in zooms]
        top = max((m for m in found if m is not None), key=lambda m: m.score, default=None)
        if top is None:
            continue
        step = np.sqrt(ZOOMS[1] / ZOOMS[0])
        found = [top] + [_match(engine, layer, frame, t, box0, top.zoom * k, stride) for k in (1 / step, step)]
        top = max((m for m in found if m is not None), key=lambda m: m.score)
        if top.score > best.score:
            best = top
            best.template = i
    return best


def move_anywhere(engine, layer: int, frame: np.ndarray, templates: list[Template], near: Refined) -> Refined:
    """The whole-frame pass of refine_box: `near` (refine_near's, on this frame) moved where its
    template, at its size, fits better (colour included) elsewhere in the frame; its score stays
    near's."""
    if near.template < 0:
        return near
    other = _match_anywhere(engine, layer, frame, templates[near.template], near, _stride(engine, layer))
    if other is not None and other.fit > near.fit:
        return Refined(other.box, near.score, near.zoom, moved=True, side=other.side, template=near.template,
                       fit=other.fit)
    return near
