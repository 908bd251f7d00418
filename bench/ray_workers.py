"""Indexing throughput on Ray Data with 1 and 2 local extract workers, beside a plain `index`,
measured side by side in one run (alternating, so drift in the machine's load hits all alike).

    python bench/ray_workers.py --videos 4 --seconds 20 --rounds 2 --preset default

Generates real-photo H.264 clips (bench/pipeline.synthetic_video), indexes them into a fresh
library per run, and prints frames/s per configuration and the ratios; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import synthetic_video  # noqa: E402

from vidsearch import api  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="vidsearch-ray-bench-"))
    try:
        # lengths differ by a second, so no video is a duplicate of another
        videos = [str(synthetic_video(work / f"v{i}.mp4", (args.seconds + i) / 60, size=(w, h))) for i in range(args.videos)]
        configs = {"plain index": {}, "ray, 1 worker": {"ray": "local", "ray_workers": 1},
                   "ray, 2 workers": {"ray": "local", "ray_workers": 2}}
        times: dict[str, list[float]] = {k: [] for k in configs}
        frames = 0
        for r in range(args.rounds):
            for name, extra in configs.items():
                lib = work / f"lib-{r}-{name.replace(' ', '').replace(',', '')}"
                t0 = time.perf_counter()
                reports = api.index_videos(videos, str(lib), args.preset, fps=args.fps, device="cpu",
                                           batch=args.batch, **extra)
                times[name].append(time.perf_counter() - t0)
                frames = sum(rep.frames for rep in reports)
                assert all(rep.status == "indexed" for rep in reports), reports
                print(f"round {r} {name}: {frames} frames in {times[name][-1]:.1f} s", flush=True)
        best = {k: min(v) for k, v in times.items()}
        out = {"cores": os.cpu_count(), "videos": args.videos, "seconds": args.seconds, "size": args.size,
               "preset": args.preset, "frames": frames, "seconds_per_run": times,
               "frames_per_s": {k: frames / v for k, v in best.items()},
               "ratio_2_vs_1_worker": best["ray, 1 worker"] / best["ray, 2 workers"],
               "ratio_ray1_vs_plain": best["plain index"] / best["ray, 1 worker"]}
        print(f"\n| configuration | frames/s (best of {args.rounds}) |\n|---|---|")
        for k, v in out["frames_per_s"].items():
            print(f"| {k} | {v:.2f} |")
        print(f"\n2 workers vs 1: {out['ratio_2_vs_1_worker']:.2f}x; Ray with 1 worker vs plain: "
              f"{out['ratio_ray1_vs_plain']:.2f}x ({frames} frames, {os.cpu_count()} cores)")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
