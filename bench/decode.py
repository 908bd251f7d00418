"""Decoding as `index` does it (the size the preset's views need, `--decode-workers` runs in
parallel), timed in a process that has imported the CLI first, as the `vidsearch` console script
has: decode workers that are processes started with `spawn` re-run that import each.
With --grab N, also what `find` decodes to refine boxes: full-resolution frames one second apart
over N seconds (the hits of one segment), grabbed one by one (a seek each) and in one pass.

    python bench/decode.py VIDEO --workers 1 2 4
    python bench/decode.py --generate 2 --workers 2     # a generated 2-minute 1080p video
    python bench/decode.py VIDEO --workers --grab 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import vidsearch.cli  # noqa: F401  (what the console script imports before anything else)
from vidsearch.config import load_preset
from vidsearch.dasr.views import decode_long_side
from vidsearch.video import Sampler, open_source, probe


def decode(path: Path, workers: int, preset: str, fps: float) -> dict:
    info = probe(path)
    long_side = decode_long_side(info.width, info.height, load_preset(preset))
    t0 = time.perf_counter()
    n = sum(1 for _ in open_source(path, "decord", long_side, info=info, workers=workers).frames(Sampler(fps)))
    dt = time.perf_counter() - t0
    return {"workers": workers, "frames": n, "long_side": long_side, "seconds": dt, "frames_per_s": n / dt}


def grab(path: Path, seconds: float) -> dict:
    from vidsearch.video import grab_frame, grab_frames

    info = probe(path)
    wanted = [(float(t), int(round(t * float(info.fps)))) for t in np.arange(0.5, min(seconds, info.duration - 0.5), 1.0)]
    t0 = time.perf_counter()
    one = [grab_frame(path, t, i, info) for t, i in wanted]
    t1 = time.perf_counter()
    many = dict(grab_frames(path, wanted, info))
    t2 = time.perf_counter()
    assert all(np.array_equal(one[k], many[k]) for k in range(len(wanted)))
    return {"video": path.name, "frames": len(wanted), "size": f"{info.width}x{info.height}",
            "one_by_one_s": t1 - t0, "one_pass_s": t2 - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", nargs="?")
    ap.add_argument("--generate", type=float, help="minutes of generated 1080p video instead of VIDEO")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--grab", type=float, help="also grab a frame a second over this many seconds (see above)")
    ap.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes of the generated video")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--fps", type=float, default=1.0)
    args = ap.parse_args()
    if not args.video and not args.generate:
        ap.error("give a VIDEO or --generate MINUTES")
    tmp = Path(tempfile.mkdtemp(prefix="vidsearch-decode-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    if args.generate:
        sys.path.insert(0, str(Path(__file__).parent))
        from pipeline import synthetic_video

        path = synthetic_video(tmp / f"generated-gop{args.gop:g}s.mp4", args.generate, gop_s=args.gop)
    else:
        path = Path(args.video)
    rows = []
    if args.grab:
        g = grab(path, args.grab)
        print(json.dumps(g), file=sys.stderr)
        print(f"| video | size | frames grabbed | one by one s | one pass s |\n|---|---|---|---|---|\n"
              f"| {g['video']} | {g['size']} | {g['frames']} | {g['one_by_one_s']:.2f} | {g['one_pass_s']:.2f} |\n")
    for w in args.workers:
        rows.append({"video": path.name, **decode(path, w, args.preset, args.fps)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    if rows:
        print("| video | decode workers | frames | long side | seconds | frames/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['video']} | {r['workers']} | {r['frames']} | {r['long_side']} | {r['seconds']:.2f} | {r['frames_per_s']:.1f} |")


if __name__ == "__main__":
    main()
