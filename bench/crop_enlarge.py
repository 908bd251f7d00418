"""Crop queries' frame ranking with the crop enlarged at most CAP times its own pixels for any
view (tried, not adopted: bench/RESULTS.md).

    python bench/crop_enlarge.py ../shared/data/instance-dev /tmp/find_real --caps 2,2.5,3,4
    python bench/crop_enlarge.py ../shared/data/instance-dev /tmp/find_real --caps 3,4 --drop

Reads a library `bench/find_real.py --query crop` built (WORK/lib-default, the clips
WORK/NAME.mp4, the crops WORK/NAME-query.png). View 0 sees a crop at the preset's long side
(512 px for the default: a 40-px crop blown up 13x) and the size views go up to 0.8 of it. With
a cap, view 0 is the crop at CAP (or the preset's tile enlargement, where more) times its size
instead, and size views above that are left out; with --drop, view 0 is left out too (the
smallest view is kept where none is under the cap). A region scores its best view, a frame its
best region (what `find` does); per sequence, the frame-level AP over the whole library, and the
recall and precision of the frames at or above the automatic threshold (search.auto_threshold).
This is the search's first stage only: `find` then re-ranks and verifies its first segments,
which bench/find_real.py measures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from find_real import LibraryFrames  # noqa: E402

from vidsearch.api import _engine  # noqa: E402
from vidsearch.dasr.query import DISTINCT, crop_sizes, crop_views, on_canvas  # noqa: E402
from vidsearch.evaluate import average_precision, load_sequences  # noqa: E402
from vidsearch.library import Library  # noqa: E402
from vidsearch.search import auto_threshold, fuse  # noqa: E402


def capped_views(engine, crop: np.ndarray, sizes: list, cap: float | None, drop: bool) -> list[np.ndarray]:
    """crop_views' views of a crop, none enlarged past `cap` times its pixels (None: find's own)."""
    if cap is None:
        return crop_views(engine, crop, sizes)
    preset = engine.preset
    longs = crop_sizes(crop.shape[:2], sizes, preset)
    limit = max(cap, preset.max_upscale) * max(crop.shape[:2])
    views = []
    if preset.long_side <= limit:
        views.append(engine.describe(crop))  # the paper's view 0
    elif not drop:
        canvas, box = on_canvas(crop, limit)
        views.append(engine.describe(canvas, box, long_side=0))
    kept = [t for t in longs if t <= limit / DISTINCT] or ([] if views else longs[:1])
    for t in kept:
        canvas, box = on_canvas(crop, t)
        views.append(engine.describe(canvas, box, long_side=0))
    return views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("work")
    ap.add_argument("--caps", default="2,2.5,3,4", help="comma-separated caps, compared with no cap")
    ap.add_argument("--drop", action="store_true", help="views past the cap left out, view 0 too")
    args = ap.parse_args()
    caps = [None] + [float(c) for c in args.caps.split(",")]
    work = Path(args.work)
    lib = Library.open(str(work / "lib-default"))
    index, videos = lib.load_index()
    engine = _engine(lib.preset(), "cpu", None)
    white = lib.index_whitening
    sizes = sorted({(v.width, v.height) for v in videos})
    seqs = load_sequences(args.data)
    regions = LibraryFrames(lib, videos, work, seqs)
    vectors = white.apply(regions.vectors) if white is not None else regions.vectors
    frames, frame_of = regions.frames, regions.frame_of
    names = ["none" if c is None else f"{c:g}x" for c in caps]
    print("AP / recall / precision at the automatic threshold, per cap" + (" (views past it dropped)" if args.drop else ""))
    print("| sequence | crop px | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(caps))
    rows = []
    for s in seqs:
        crop = np.asarray(Image.open(work / f"{s.name}-query.png").convert("RGB"))
        truth = regions.showing(s)
        row = []
        for cap in caps:
            views = capped_views(engine, crop, sizes, cap, args.drop)
            raw = np.stack([fuse([views[0]])] + views[1:])  # as find fuses view 0 of its queries
            q = white.apply(raw) if white is not None else raw
            threshold, _ = auto_threshold(index, q)
            best = np.full(len(frames), -np.inf)
            np.maximum.at(best, frame_of, (vectors @ q.T).max(1))
            taken = best >= threshold
            right = int((taken & truth).sum())
            row.append((average_precision(best, truth), right / max(1, truth.sum()), right / max(1, taken.sum())))
        rows.append(row)
        cells = " | ".join(f"{a:.2f} / {r:.2f} / {p:.2f}" for a, r, p in row)
        print(f"| {s.name} | {crop.shape[1]}x{crop.shape[0]} | {cells} |", flush=True)
    mean = np.mean(rows, axis=0)
    print(f"| mean ({len(rows)}) | | " + " | ".join(f"{a:.3f} / {r:.3f} / {p:.3f}" for a, r, p in mean) + " |")


if __name__ == "__main__":
    main()
