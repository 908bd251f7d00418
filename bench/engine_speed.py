"""Engine speed: frames/s per stage for DASR and DASR* (fp32 / bf16), and the same frames
through a one-backward-per-peak loop (the released code's structure) in the same run.

    python bench/engine_speed.py --device cuda --backbone resnet50 --weights random --frames 16
    python bench/engine_speed.py --device cpu --frames 2            # what a 2-core CPU does

Writes a table to stdout and, with --json, the numbers as JSON. Reported figures belong in
bench/RESULTS.md with the command, date, device and commit (--append-results does that).
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

import numpy as np
import torch
from PIL import Image

from vidsearch.config import load_preset
from vidsearch.dasr.engine import Engine
from vidsearch.dasr.excitation import Rules
from vidsearch.dasr.reference import reference_maps
from vidsearch.dasr.regions import find_peaks, make_seeds
from vidsearch.sample import skimage_photo

PHOTOS = ("rocket", "coffee", "astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field")


def frames(n: int, size=(512, 288)) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(skimage_photo(PHOTOS[i % len(PHOTOS)])).resize(size)) for i in range(n)])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_engine(engine: Engine, batch: np.ndarray, repeats: int) -> dict:
    t0 = time.perf_counter()
    engine.extract(batch[: min(2, len(batch))])  # warm-up (allocations, cudnn autotune, compilation)
    engine.extract(batch)
    sync(engine.device)
    warmup = time.perf_counter() - t0
    engine.timings.clear()
    sync(engine.device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    regions = 0
    for _ in range(repeats):
        regions += len(engine.extract(batch).frame)
    sync(engine.device)
    total = time.perf_counter() - t0
    n = len(batch) * repeats
    out = {"frames_per_s": n / total, "ms_per_frame": 1000 * total / n, "regions_per_frame": regions / n,
           "warmup_s": warmup}
    if engine.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for stage, seconds in engine.timings.items():
        out[f"{stage}_ms_per_frame"] = 1000 * seconds / n
    return out


def run_per_peak_loop(engine: Engine, batch: np.ndarray) -> dict:
    """The same peaks, each back-propagated alone with autograd (one backward per peak)."""
    p = engine.preset
    rules = Rules(p.residual, p.maxpool, "input", "fp32")
    x, _ = engine.prepare(batch)
    sync(engine.device)
    t0 = time.perf_counter()
    peaks = 0
    for b in range(len(batch)):
        values = engine.graph.forward(x[b : b + 1])
        pk = values[engine.graph.peak][0]
        pos, _ = find_peaks(pk.mean(0), p.peaks, p.max_peaks)
        reference_maps(engine.graph, x[b : b + 1], make_seeds(pk, pos, p.seed), rules, torch.float32)
        peaks += len(pos)
    sync(engine.device)
    total = time.perf_counter() - t0
    return {"frames_per_s": len(batch) / total, "ms_per_frame": 1000 * total / len(batch),
            "ms_per_peak": 1000 * total / max(1, peaks), "peaks_per_frame": peaks / len(batch)}


def compiled_rows(base, args, batch: np.ndarray) -> dict:
    """The same runs with Tape.backprop through torch.compile (the op loop unrolled into one graph
    per peak-layer shape); a failure is a row of its own, not the end of the bench."""
    from vidsearch.dasr import excitation

    eager = excitation.Tape.backprop
    rows = {}
    try:
        excitation.Tape.backprop = torch.compile(eager, dynamic=True)
        for mode, peaks, nms in (("DASR", "local_max", None), ("DASR*", "above_mean", 0.3)):
            for dtype in args.dtypes.split(","):
                name = f"{mode} {dtype} compiled"
                try:
                    engine = Engine(base.replace(peaks=peaks, nms_iou=nms, dtype=dtype), args.device, args.weights)
                    rows[name] = run_engine(engine, batch, args.repeats)
                except Exception as e:  # noqa: BLE001  (reported, the other rows still run)
                    rows[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(f"{name}: {rows[name]}", file=sys.stderr)
    finally:
        excitation.Tape.backprop = eager
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="random for random initialisation (speed only)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--loop-frames", type=int, default=1, help="frames for the per-peak loop (it is slow)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the adjoint pass compiled with torch.compile (dynamic shapes: K peaks varies)")
    ap.add_argument("--json")
    ap.add_argument("--append-results", action="store_true")
    args = ap.parse_args()
    base = load_preset("default").replace(backbone=args.backbone)
    batch = frames(args.frames)
    rows = {}
    for mode, peaks, nms in (("DASR", "local_max", None), ("DASR*", "above_mean", 0.3)):
        for dtype in args.dtypes.split(","):
            engine = Engine(base.replace(peaks=peaks, nms_iou=nms, dtype=dtype), args.device, args.weights)
            rows[f"{mode} {dtype}"] = run_engine(engine, batch, args.repeats)
            print(f"{mode} {dtype}: {rows[f'{mode} {dtype}']}", file=sys.stderr)
        # per peak against the loop: every peak through (cover = 0), as the loop does
        engine = Engine(base.replace(peaks=peaks, nms_iou=nms, dtype="fp32", cover=0.0), args.device, args.weights)
        if mode == "DASR*" and base.cover > 0:
            # the same frames without predicted suppression: on a GPU each of its rounds ends in a
            # host sync, so whether cover pays there is measured here, side by side
            rows[f"{mode} fp32 cover=0"] = run_engine(engine, batch, args.repeats)
            print(f"{mode} fp32 cover=0: {rows[f'{mode} fp32 cover=0']}", file=sys.stderr)
        loop = run_per_peak_loop(engine, batch[: args.loop_frames])
        fast = run_engine(engine, batch[: args.loop_frames], 1)
        loop["batched_ms_per_peak_same_frames"] = fast["backprop_ms_per_frame"] / max(1e-9, loop["peaks_per_frame"])
        loop["speedup_backprop_per_peak"] = loop["ms_per_peak"] / max(1e-9, loop["batched_ms_per_peak_same_frames"])
        rows[f"{mode} per-peak loop fp32"] = loop
        print(f"{mode} loop: {loop}", file=sys.stderr)
    if args.compile:
        rows.update(compiled_rows(base, args, batch))
    device = str(engine.device) + (f" ({torch.cuda.get_device_name(0)})" if engine.device.type == "cuda" else
                                   f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    cols = ("frames_per_s", "ms_per_frame", "forward_ms_per_frame", "backprop_ms_per_frame", "boxes_ms_per_frame",
            "pooling_ms_per_frame", "regions_per_frame", "ms_per_peak", "speedup_backprop_per_peak", "peak_gpu_mb",
            "warmup_s")
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{r[c]:.2f}" if c in r else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + (f" {r['error']} |" if "error" in r else ""))
    table = "\n".join(lines)
    print(table)
    result = {"device": device, "backbone": args.backbone, "frames": args.frames, "size": "512x288", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.append_results:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        with (here / "RESULTS.md").open("a") as f:
            f.write(f"## Engine speed, {args.backbone}, {device}\n\n- command: `python bench/engine_speed.py "
                    f"{shlex.join(sys.argv[1:])}`\n- date: {datetime.date.today().isoformat()}, commit {commit}; "
                    f"frames 512x288 from skimage photos\n\n{table}\n\n")


if __name__ == "__main__":
    main()
