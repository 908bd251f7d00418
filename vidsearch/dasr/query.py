"""Query views: one query described at the scales it can meet library regions at.

View 0 is the paper's: the query image at the preset's long side, pooled over the box. Then:
- a frame with a box (`--query IMG --box`, `--query-video --at`): the frame is seen as the
  library sees frames of its size, at every tile level, and the box pooled at each;
- a crop alone: an object cut from footage has a known pixel size, and the library knows its
  frames' sizes, so the crop is also described at the size it would have in each level's
  views, rather than blown up to fill the input. Elsewhere in the footage the object can be
  nearer or farther (a close-up, a wide shot), so it is described at the sizes between too,
  SIZE_STEP apart. It is seen alone, its border continued only as far as the network's
  smallest input needs: measured on the generated cross-scene set, more made-up surroundings
  (0.5, 1 or 2 times its size) matched worse (bench/RESULTS.md).
A library region is scored by its best-matching view (search.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .views import level_factor, level_scales, usable_levels

MIN_VIEW_PX = 12  # a crop smaller than this in a view describes nothing of its own
MAX_VIEW_FRACTION = 0.8  # at this fraction of the long side, view 0 already sees it at that size
# A crop is also seen at sizes this factor apart between those bounds, wherever its own sizes in
# the library's views leave a gap: the object appears at other sizes in other shots. Measured on
# generated 1080p props of 40, 64 and 100 px searched across sizes (bench/RESULTS.md).
SIZE_STEP = 1.5
# ... but not below half its smallest own size: a large crop seen at a few cells matches any
# texture (a generated clip's background after the object had left, tests/test_cli_e2e.py).
FARTHER = 2.0
DISTINCT = 1.2  # sizes closer than this factor describe nearly the same thing


def frame_views(engine, image: np.ndarray, box: tuple[float, float, float, float]) -> list[np.ndarray]:
    """A frame and a box in it: the box pooled at every level the library uses for this size."""
    p = engine.preset
    h, w = image.shape[:2]
    views = [engine.describe(image, box)]
    for n in usable_levels(w, h, p):
        if n > 1:
            views.append(engine.describe(image, box, long_side=int(round(p.long_side * level_factor(n, p.tile_overlap)))))
    return views


def crop_sizes(crop_hw: tuple[int, int], library_sizes: list[tuple[int, int]], preset) -> list[float]:
    """The long sides (network pixels) a crop is described at, small first: the sizes it has in
    the views of frames of the given sizes, if it was cut from such footage (distinct within
    DISTINCT), then the sizes SIZE_STEP apart that none of those is near, from FARTHER times
    smaller than the smallest of them up; only sizes view 0 does not already cover and that are
    large enough to describe."""
    lo, hi = MIN_VIEW_PX, MAX_VIEW_FRACTION * preset.long_side
    long_crop = max(crop_hw)
    wanted = sorted({long_crop * s for w, h in library_sizes for s in level_scales(w, h, preset).values()})
    out: list[float] = []
    for t in wanted:
        if lo <= t <= hi and (not out or t > out[-1] * DISTINCT):
            out.append(t)
    own, floor = list(out), wanted[0] / FARTHER if wanted else lo
    t = lo
    while t <= hi:
        if t >= floor and all(max(t, o) / min(t, o) > DISTINCT for o in own):
            out.append(t)
        t *= SIZE_STEP
    return sorted(out)


def on_canvas(crop: np.ndarray, long_side: float, context: float = 0.0) -> tuple[np.ndarray, tuple[float, ...]]:
    """The crop scaled to `long_side` pixels, centred on a canvas that continues its border
    pixels by `context` times its size on every side; returns the canvas and the crop's box."""
    h, w = crop.shape[:2]
    s = long_side / max(h, w)
    sw, sh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = np.asarray(Image.fromarray(crop).resize((sw, sh), Image.BICUBIC if s > 1 else Image.BOX))
    pad = max(int(round(context * max(sw, sh))), (32 - min(sw, sh) + 1) // 2, 0)
    canvas = np.pad(small, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return np.ascontiguousarray(canvas), (float(pad), float(pad), float(pad + sw), float(pad + sh))


def crop_views(engine, crop: np.ndarray, library_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """A crop alone: view 0, plus the crop at the sizes it has in the library's views."""
    views = [engine.describe(crop)]
    for t in crop_sizes(crop.shape[:2], library_sizes, engine.preset):
        canvas, box = on_canvas(crop, t)
        views.append(engine.describe(canvas, box, long_side=0))
    return views


def query_views(engine, image: np.ndarray, box: tuple[float, float, float, float] | None,
                library_sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """All views of one query: `box` None (or the whole image) means a crop alone."""
    h, w = image.shape[:2]
    whole = box is None or (box[0] <= 0 and box[1] <= 0 and box[2] >= w and box[3] >= h)
    if whole:
        return crop_views(engine, image, library_sizes)
    return frame_views(engine, image, box)
