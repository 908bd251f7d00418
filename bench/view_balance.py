"""Crop queries' region scores with each view balanced by its background spread, against the
best raw view (tried, not adopted: bench/RESULTS.md).

    python bench/view_balance.py ../shared/data/instance-dev /tmp/find_real --crops '/tmp/crops/{}.png'

Reads a library `bench/find_real.py` built (WORK/lib-default, the clips WORK/NAME.mp4) and one
crop per sequence. A region scores its best view (what `find` does), or its best view after each
view is divided by the robust sigma of its scores over 20,000 regions drawn from the library (a
z-score without the median taken off, so each view is only rescaled; taking it off too moved the
mean APs by under 0.004, one sequence's by 0.05). A frame scores its best region; the
frame-level AP over the whole library, per sequence and mean. This is the search's first stage
only: `find` then re-ranks and verifies its first segments."""

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
from vidsearch.dasr.query import query_views  # noqa: E402
from vidsearch.evaluate import average_precision, load_sequences  # noqa: E402
from vidsearch.library import Library  # noqa: E402
from vidsearch.search import fuse, robust_stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("work")
    ap.add_argument("--crops", required=True, help="path pattern of the crops, {} the sequence's name")
    args = ap.parse_args()
    work = Path(args.work)
    lib = Library.open(str(work / "lib-default"))
    index, videos = lib.load_index()
    engine = _engine(lib.preset(), "cpu", None)
    sizes = sorted({(v.width, v.height) for v in videos})
    seqs = load_sequences(args.data)
    regions = LibraryFrames(lib, videos, work, seqs)
    vectors, frames, frame_of = regions.vectors, regions.frames, regions.frame_of
    background = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 20_000), replace=False)
    rows = []
    print("| sequence | crop px | views | true frames | AP best raw view | AP best balanced view |")
    print("|---|---|---|---|---|---|")
    for s in seqs:
        crop = np.asarray(Image.open(args.crops.format(s.name)).convert("RGB"))
        views = query_views(engine, crop, None, sizes)
        q = np.stack([fuse([views[0]])] + views[1:])
        scores = vectors @ q.T
        spread = np.array([robust_stats(scores[background, i])[1] for i in range(len(q))])
        truth = regions.showing(s)
        aps = []
        for region in (scores.max(1), (scores / spread).max(1)):
            best = np.full(len(frames), -np.inf)
            np.maximum.at(best, frame_of, region)
            aps.append(average_precision(best, truth))
        rows.append(aps)
        print(f"| {s.name} | {crop.shape[1]}x{crop.shape[0]} | {len(q)} | {int(truth.sum())} | {aps[0]:.3f} | {aps[1]:.3f} |")
    mean = np.mean(rows, axis=0)
    print(f"| mean ({len(rows)}) | | | | {mean[0]:.3f} | {mean[1]:.3f} |")


if __name__ == "__main__":
    main()
