"""A query's template alone, no search: how well `refine_box` places the box from a crop cut
alone, from the frame and its box, and from the crop with made-up surroundings (its edge pixels
repeated outwards, or the crop mirrored outwards, 0.5 of its long side), on tracking sequences
with ground truth. Each sequence's crop is cut from the first frame showing the object halfway
between two frames looked at (every `--every`th); the box is refined on the others, anchored
at the true box and at the true box grown and moved off-centre (as a DASR region often is).

    python bench/crop_template.py ../shared/data/instance-dev --every 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vidsearch import refine  # noqa: E402
from vidsearch.config import load_preset  # noqa: E402
from vidsearch.dasr.engine import Engine  # noqa: E402
from vidsearch.evaluate import iou, load_sequences  # noqa: E402

TEMPLATES = ("crop", "frame", "edge", "mirror")
PAD_MODES = {"edge": "edge", "mirror": "symmetric"}  # numpy.pad's names


def surrounded(crop: np.ndarray, mode: str, fraction: float = 0.5) -> tuple[np.ndarray, tuple]:
    """The crop padded outwards by `fraction` of its long side, and where it lies in that."""
    h, w = crop.shape[:2]
    p = int(round(fraction * max(h, w)))
    return np.pad(crop, ((p, p), (p, p), (0, 0)), mode=PAD_MODES[mode]), (p, p, p + w, p + h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a folder of tracking sequences (vidsearch eval's layout)")
    ap.add_argument("--every", type=int, default=20, help="look at every n-th frame")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    engine = Engine(load_preset("default"), args.device)
    layer = refine.refine_layer(engine)
    rows = []  # (sequence, template, anchor, IoU)
    for seq in load_sequences(args.data):
        q = next(i for i in range(args.every // 2, len(seq.frames), args.every) if seq.boxes[i] is not None)
        image = np.asarray(Image.open(seq.frames[q]).convert("RGB"))
        x1, y1, x2, y2 = seq.boxes[q]
        crop = np.ascontiguousarray(image[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))])
        h, w = crop.shape[:2]
        templates = {"crop": refine.make_template(engine, layer, crop, (0, 0, w, h)),
                     "frame": refine.make_template(engine, layer, image, (x1, y1, x2, y2))}
        for mode in PAD_MODES:
            templates[mode] = refine.make_template(engine, layer, *surrounded(crop, mode))
        for f in range(0, len(seq.frames), args.every):
            if seq.boxes[f] is None or f == q:
                continue
            frame = np.asarray(Image.open(seq.frames[f]).convert("RGB"))
            gt = seq.boxes[f]
            gw, gh = gt[2] - gt[0], gt[3] - gt[1]
            anchors = {"truth": gt, "off-centre": (gt[0] - 0.2 * gw, gt[1] - 0.6 * gh, gt[2] + 0.8 * gw, gt[3] + 0.4 * gh)}
            for name, t in templates.items():
                for anchor, box0 in anchors.items():
                    rows.append((seq.name, name, anchor, iou(tuple(refine.refine_box(engine, layer, frame, [t], box0).box), gt)))
    print("| template | anchored at the truth: IoU>=0.5 / mean IoU | anchored off-centre |")
    print("|---|---|---|")
    for name in TEMPLATES:
        cells = []
        for anchor in ("truth", "off-centre"):
            v = [x for _, t, a, x in rows if t == name and a == anchor]
            cells.append(f"{np.mean([x >= 0.5 for x in v]):.3f} / {np.mean(v):.3f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"({len([r for r in rows if r[1] == 'crop' and r[2] == 'truth'])} frames)")
    print("| sequence | " + " | ".join(TEMPLATES) + " |")
    print("|---|" + "---|" * len(TEMPLATES))
    for s in sorted({r[0] for r in rows}):
        print(f"| {s} | " + " | ".join(f"{np.mean([x >= 0.5 for q, t, _, x in rows if q == s and t == n]):.2f}" for n in TEMPLATES) + " |")


if __name__ == "__main__":
    main()
