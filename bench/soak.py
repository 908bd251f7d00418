"""Soak test: index, query and remove in a loop for N minutes with random kill -9, checking the
library's invariants after every step. Prints the figures and exits non-zero on any violation.

    python bench/soak.py --minutes 10 [--workdir /tmp/soak] [--seed 1]

Invariants: every committed video has a readable shard whose rows match the catalog; no path is
indexed twice; `status` and `find` work; the regions status reports add up; after a final
uninterrupted run every video is indexed, the index is current and no shard is orphaned.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from vidsearch import api
from vidsearch.library import Library
from vidsearch.sample import make_sample, object_crop

PRESET = str(Path(__file__).resolve().parent.parent / "tests" / "presets" / "tiny.toml")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workdir", default="/tmp/vidsearch-soak")
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    videos = []
    for i in range(args.videos):
        p = work / f"clip {i}.mp4"
        start = rng.uniform(0, 3)
        make_sample(p, seconds=rng.choice([3.0, 4.0, 5.0]), appear=(start, start + 1.5), size=(320, 180))
        videos.append(p)
    crop = work / "cup.png"
    Image.fromarray(object_crop("coffee")).save(crop)
    lib = work / "lib"
    figures = {"runs": 0, "kills": 0, "finds": 0, "removes": 0, "rewrites": 0, "violations": 0}
    problems: list[str] = []

    def check(when: str) -> None:
        if not (lib / "catalog.sqlite").exists():
            return
        found = Library.open(lib).verify()
        status = api.status(str(lib))
        if status["regions"] != sum(v["regions"] for v in status["videos"]):
            found.append("status regions do not add up")
        if status["videos"]:
            api.find([str(crop)], library=str(lib), device="cpu")
            figures["finds"] += 1
        for f in found:
            problems.append(f"{when}: {f}")
        figures["violations"] += len(found)

    end = time.monotonic() + args.minutes * 60
    cmd = [sys.executable, "-m", "vidsearch", "index", "-l", str(lib), "--preset", PRESET, "--device", "cpu", "--wait", "120"]
    while time.monotonic() < end:
        action = rng.random()
        if action < 0.1 and (lib / "catalog.sqlite").exists():
            status = api.status(str(lib))
            if status["videos"]:
                victim = rng.choice(status["videos"])["path"]
                subprocess.run([sys.executable, "-m", "vidsearch", "remove", victim, "-l", str(lib), "--wait", "120"],
                               capture_output=True)
                figures["removes"] += 1
        elif action < 0.2:
            v = rng.choice(videos)  # the editor re-exports a clip: content changes under the same path
            make_sample(v, seconds=rng.choice([3.0, 4.0]), appear=(rng.uniform(0, 2), 3.0), size=(320, 180))
            figures["rewrites"] += 1
        subset = rng.sample(videos, rng.randint(1, len(videos)))
        proc = subprocess.Popen(cmd[:4] + [str(v) for v in subset] + cmd[4:], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        figures["runs"] += 1
        if rng.random() < 0.7:
            time.sleep(rng.uniform(0.3, 8.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                figures["kills"] += 1
        proc.wait()
        check(f"run {figures['runs']}")
    final = subprocess.run(cmd[:4] + [str(v) for v in videos] + cmd[4:], capture_output=True, text=True)
    figures["runs"] += 1
    check("final")
    status = api.status(str(lib))
    if final.returncode != 0 or len(status["videos"]) != len(videos) or not status["index"]["current"]:
        problems.append(f"final run: exit {final.returncode}, {len(status['videos'])} videos, index current "
                        f"{status['index']['current']}")
        figures["violations"] += 1
    shards = sorted(p.name for p in (lib / "shards").iterdir())
    if shards != sorted(f"v{v['id']}.npz" for v in status["videos"]):
        problems.append(f"orphan shards after the final run: {shards}")
        figures["violations"] += 1
    figures.update(videos=len(status["videos"]), regions=status["regions"], minutes=args.minutes)
    print(json.dumps(figures))
    for p in problems:
        print("VIOLATION", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
