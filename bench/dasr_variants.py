"""DASR* variants side by side on the same real frames: speed, regions per frame, and how well
each variant's boxes agree with the first variant's (today's default).

    python bench/dasr_variants.py ../shared/data/instance-dev --frames 24 --device cpu \
        --variant default --variant default:prefilter=stride16 --variant dasr

A variant is a preset name (or .toml) with optional `:KEY=VALUE` overrides. Box agreement is,
for every region of the reference variant, the best IoU among the variant's regions on the same
frame, averaged (1.0 = every reference box is reproduced). Frames are spread evenly over the
sequences of an Instance-style data set (<seq>/img/*.jpg); DATA `skimage` takes real photos
shipped with scikit-image instead. --append-results adds the table to
bench/RESULTS.md with the command, date, device and commit.

Against an older checkout (what a change did to speed and boxes): run this script with the old
code first, `PYTHONPATH=/path/to/old python bench/dasr_variants.py ... --boxes-out old.npz`,
then with today's and `--boxes-ref old.npz` (box_iou_vs_ref; the same --frames).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vidsearch.queries import load_image
from vidsearch.config import load_preset, with_overrides
from vidsearch.dasr.engine import Engine
from vidsearch.dasr.views import frame_views
from vidsearch.evaluate import load_sequences

HERE = Path(__file__).resolve().parent


def variant_preset(text: str):
    name, *overrides = text.split(":")
    return with_overrides(load_preset(name), overrides)


SKIMAGE = ("rocket", "coffee", "astronaut", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina")  # all in every scikit-image


def pick_frames(data: str, n: int) -> list[np.ndarray]:
    if data == "skimage":  # real photos that ship with scikit-image (where no data set is at hand)
        from vidsearch.sample import skimage_photo

        from PIL import Image

        # cut to 16:9 and sized 512x288 as the engine sees footage: sides that line up with the
        # peak layer's grid, so spatial windows apply (most photos' 3:2 would not)
        out = []
        for i in range(n):
            img = skimage_photo(SKIMAGE[i % len(SKIMAGE)])
            h, w = img.shape[:2]
            k = min(w // 16, h // 9)
            y, x = (h - 9 * k) // 2, (w - 16 * k) // 2
            out.append(np.asarray(Image.fromarray(img[y : y + 9 * k, x : x + 16 * k]).resize((512, 288), Image.BILINEAR)))
        return out
    seqs = load_sequences(data)
    per = max(1, -(-n // len(seqs)))
    out = []
    for s in seqs:
        idx = np.linspace(0, len(s.frames) - 1, per).round().astype(int)
        out += [load_image(s.frames[i]) for i in idx]
    return out[:n]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from torchvision.ops import box_iou as tv_iou

    return tv_iou(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()


def agreement(ref: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """Per reference box, the best IoU among `mine` (0 where there are none)."""
    return box_iou(ref, mine).max(1) if len(mine) else np.zeros(len(ref))


def cut_by_tile(box: np.ndarray, tiles: list[tuple[int, int, int, int]], width: int, height: int) -> bool:
    """Whether the box lies in a tile and ends at one of its edges inside the frame (within a
    pixel): the tile cut the object off there."""
    x1, y1, x2, y2 = box
    for tx1, ty1, tx2, ty2 in tiles:
        if tx1 - 1 <= x1 and ty1 - 1 <= y1 and x2 <= tx2 + 1 and y2 <= ty2 + 1:
            if (tx1 > 0 and x1 - tx1 < 1) or (ty1 > 0 and y1 - ty1 < 1) \
                    or (tx2 < width and tx2 - x2 < 1) or (ty2 < height and ty2 - y2 < 1):
                return True
    return False


def count_cut(boxes: list[np.ndarray], frames: list[np.ndarray], preset) -> int:
    """How many of the boxes (per frame) a tile of the preset's views cut off at its edge."""
    n = 0
    for r, img in zip(boxes, frames):
        h, w = img.shape[:2]
        tiles = [t.box for t in frame_views(w, h, preset) if t.level > 1]
        n += sum(cut_by_tile(box, tiles, w, h) for box in r)
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--append-results", action="store_true")
    ap.add_argument("--boxes-out", help="save the first variant's boxes here (.npz), e.g. from an older checkout")
    ap.add_argument("--boxes-ref", help="boxes saved by --boxes-out: every variant's agreement with them")
    ap.add_argument("--views", action="store_true",
                    help="extract as index does (every tile level, the whole-frame region), not one view")
    args = ap.parse_args()
    variants = args.variant or ["default", "default:prefilter=stride8", "default:prefilter=stride16"]
    frames = pick_frames(args.data, args.frames)
    engines = [Engine(variant_preset(text), args.device) for text in variants]
    for engine in engines:
        engine.extract(frames[0][None])  # warm-up
        engine.timings.clear()
        if hasattr(engine, "counts"):  # not in checkouts older than `cover` (--boxes-out runs)
            engine.counts.clear()
    # Frames outer, variants inner: every variant sees the same machine load, frame by frame
    # (a variant run after another on a shared CPU would otherwise be timed under other load).
    boxes = [[] for _ in variants]
    seconds = [0.0] * len(variants)
    for img in frames:
        for v, engine in enumerate(engines):
            t0 = time.perf_counter()
            r = engine.extract_views(img[None]) if args.views else engine.extract(img[None])
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[v] += time.perf_counter() - t0
            boxes[v].append(r.boxes)
    if args.boxes_out:
        np.savez(args.boxes_out, *boxes[0])
    ref_boxes = None
    if args.boxes_ref:
        with np.load(args.boxes_ref) as saved:
            ref_boxes = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(ref_boxes) != len(frames):
            sys.exit(f"--boxes-ref holds {len(ref_boxes)} frames, this run has {len(frames)}: use the same --frames")
    rows = []
    for v, (text, engine) in enumerate(zip(variants, engines)):
        row = {"variant": text, "s_per_frame": seconds[v] / len(frames),
               "regions_per_frame": float(np.mean([len(b) for b in boxes[v]]))}
        for stage, sec in engine.timings.items():
            row[f"{stage}_s"] = sec / len(frames)
        # peaks found, and those back-propagated (fewer with a prefilter or `cover`)
        if hasattr(engine, "counts"):
            row["peaks_per_frame"] = engine.counts["peaks"] / len(frames)
            row["backprop_peaks_per_frame"] = engine.counts["backpropagated"] / len(frames)
        if args.views:  # how many of its boxes a tile cut off at its edge
            row["cut_by_tile"] = count_cut(boxes[v], frames, engine.preset) / max(1, sum(map(len, boxes[v])))
        if v:
            best = [agreement(ref, mine) if len(ref) else np.zeros(0) for ref, mine in zip(boxes[0], boxes[v])]
            row["box_iou_vs_first"] = float(np.mean(np.concatenate(best)))
            # the first variant's boxes this one has nothing like (IoU < 0.5), and how many of
            # those a tile cut off at its edge (with --views)
            lost = [ref[b < 0.5] for ref, b in zip(boxes[0], best)]
            n_lost = sum(map(len, lost))
            row["lost_vs_first"] = n_lost / sum(map(len, boxes[0]))
            if args.views:
                row["lost_cut_by_tile"] = count_cut(lost, frames, engines[0].preset) / max(1, n_lost)
        if ref_boxes is not None:
            row["box_iou_vs_ref"] = float(np.mean(np.concatenate([agreement(ref, mine) for ref, mine in zip(ref_boxes, boxes[v]) if len(ref)])))
        rows.append(row)
        print(row, file=sys.stderr)
    base = rows[0]["s_per_frame"]
    for row in rows:
        row["speedup"] = base / row["s_per_frame"]
    cols = ["s_per_frame", "speedup", "regions_per_frame", "box_iou_vs_first", "lost_vs_first"] \
        + (["lost_cut_by_tile", "cut_by_tile"] if args.views else []) + (["box_iou_vs_ref"] if ref_boxes else []) \
        + ["peaks_per_frame", "backprop_peaks_per_frame", "forward_s", "prefilter_s", "backprop_s"]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row['variant']} | " + " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    if args.append_results:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=HERE).stdout.strip()
        cmd = shlex.join(["python", "bench/dasr_variants.py"] + sys.argv[1:])
        head = (f"## DASR* variants on real frames, {Engine(variant_preset(variants[0]), args.device).device.type} "
                f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)\n\n"
                f"- command: `{cmd}`\n- date: {datetime.date.today().isoformat()}, commit {commit}"
                f"{' (uncommitted changes)' if dirty else ''}; {len(frames)} frames of {args.data}\n\n")
        with (HERE / "RESULTS.md").open("a") as f:
            f.write(head + table + "\n\n")


if __name__ == "__main__":
    main()
