"""Run `vidsearch eval` on a data set and append the table to bench/RESULTS.md with the exact
command, date, device and git commit.

    python bench/eval_dev.py ../shared/data/instance-dev --device cpu [--method ...] [--stride 4]
        [--protocol tracking|cross-scene] [--query-mode frame|crop] [--cache DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("map@50", "map@100", "map@all", "loc_recall@0.5", "miou", "regions_per_frame", "frames_per_s",
           "refine_ms_per_frame", "rerank_ms_per_frame")
BUCKET_COLUMNS = ("map@all", "loc_recall@0.5", "miou")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--title", default="vidsearch eval")
    ap.add_argument("--json-out", help="also keep the full JSON (per-query APs) here")
    ap.add_argument("--protocol", default="tracking")
    ap.add_argument("--query-mode", default="frame")
    ap.add_argument("--cache", help="vidsearch eval --cache DIR")
    args = ap.parse_args()
    run(args)


def run(args) -> str:
    """Run the eval the args describe, append its tables to RESULTS.md, return them."""
    cmd = ["vidsearch", "eval", args.data, "--json", "--device", args.device, "--preset", args.preset,
           "--stride", str(args.stride), "--protocol", args.protocol, "--query-mode", args.query_mode] + \
        (["--max-frames", str(args.max_frames)] if args.max_frames else []) + \
        (["--cache", args.cache] if args.cache else [])
    for m in args.method:
        cmd += ["--method", m]
    start = time.time()
    # progress bars go to our stderr; the JSON comes back on stdout
    proc = subprocess.run([sys.executable, "-m", "vidsearch"] + cmd[1:], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit("vidsearch eval failed (its error is above)")
    result = json.loads(proc.stdout)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    p = result["protocol"]
    lines = [f"## {args.title}", "",
             f"- command: `{shlex.join(cmd)}`",
             f"- date: {datetime.date.today().isoformat()}, commit {commit}{' (uncommitted changes)' if dirty else ''}, "
             f"device {result['device']} ({platform.processor() or platform.machine()}), {time.time() - start:.0f} s",
             f"- protocol: {p['kind']}, {p['query_mode']} queries; {p['sequences']} sequences, {p['queries']} queries, "
             f"{p['references']} references, stride {p['stride']}",
             "", "| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in result["methods"].items():
        lines.append(f"| {name} | " + " | ".join("-" if m.get(c) is None else f"{m[c]:.3f}" for c in COLUMNS) + " |")
    first = next(iter(result["methods"].values()))["buckets"]
    counts = ", ".join(f"{b} {v['queries']} queries / {v['references']} references" for b, v in first.items())
    lines += ["", f"Per object size (target area / frame area; {counts}):", "",
              "| method | " + " | ".join(f"{b} {c}" for b in first for c in BUCKET_COLUMNS) + " |",
              "|---" * (len(first) * len(BUCKET_COLUMNS) + 1) + "|"]
    for name, m in result["methods"].items():
        cells = [m["buckets"][b][c] for b in first for c in BUCKET_COLUMNS]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    text = "\n".join(lines) + "\n\n"
    results = HERE / "RESULTS.md"
    if not getattr(args, "results", True):
        print(text)
        return text
    if not results.exists():
        results.write_text("# Benchmark results\n\nEach section was appended by a script in bench/; nothing here is edited by hand.\n\n")
    with results.open("a") as f:
        f.write(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
