"""The generated small-object set at full size, and `vidsearch eval` on it under the three
protocols that matter for small things: tracking (frame + box), cross-scene with the frame, and
cross-scene with the crop alone (what an editor gives). Tables go to bench/RESULTS.md.

    python bench/small_objects.py --out /tmp/smallset --device cpu --method 'dasr*' --method mac
    python bench/small_objects.py --out /tmp/smallset --scenes shared   # real footage as scenes

Scenes: `skimage` (collages of skimage.data photos) or `shared` (frames of the real videos and
sequences in ../shared/data, upscaled to the frame size; read from there, never copied into
the project). Objects are real photos pasted at --sizes pixels (long side), off-centre,
drifting, partly hidden every third frame; every object is seen in len(--sizes) scenes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import eval_dev  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"


def shared_scenes(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """Frames of the largest real footage in ../shared/data, a few apart, as scenes."""
    from PIL import Image

    from vidsearch.evaluate import load_sequences

    seqs = sorted(load_sequences(SHARED / "instance-dev"), key=lambda s: -s.size[0] * s.size[1])
    frames = []
    for k in range(count):
        s = seqs[k % len(seqs)]
        frames.append(s.frames[(k // len(seqs)) * len(s.frames) // 2])
    return [np.asarray(Image.open(f).convert("RGB").resize(size, Image.BICUBIC)) for f in frames]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="where the set is (written if missing)")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--sizes", default="40,64,100,200,400", help="object long sides in pixels")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--scenes", default="skimage", choices=("skimage", "shared"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--protocols", default="tracking/frame,cross-scene/frame,cross-scene/crop")
    ap.add_argument("--cache", help="vidsearch eval --cache DIR (default: OUT/cache)")
    ap.add_argument("--no-results", action="store_true", help="print the tables, do not append them to RESULTS.md")
    ap.add_argument("--json-dir", help="also keep each protocol's full JSON here, as small-PROTOCOL-MODE.json")
    args = ap.parse_args()
    out = Path(args.out)
    w, h = (int(v) for v in args.size.split("x"))
    sizes = [int(v) for v in args.sizes.split(",")]
    if not (out / "sequences").is_dir():
        from vidsearch.testsets import default_scenes, write_set

        count = max(len(sizes) + 1, 6)
        scenes = shared_scenes((w, h), count) if args.scenes == "shared" else default_scenes((w, h), count)
        write_set(out, (w, h), sizes, frames=args.frames, scenes=scenes)
        print(f"wrote the set to {out}", file=sys.stderr)
    subject = "Small objects" if args.preset == "default" else f"Preset {args.preset}, small objects"
    for pm in args.protocols.split(","):
        protocol, mode = pm.split("/")
        run = argparse.Namespace(data=str(out), device=args.device, preset=args.preset, stride=args.stride,
                                 max_frames=None, method=args.method, protocol=protocol, query_mode=mode,
                                 cache=args.cache or str(out / "cache"),
                                 results=not args.no_results,
                                 json_out=args.json_dir and str(Path(args.json_dir) / f"small-{protocol}-{mode}.json"),
                                 title=f"{subject} ({args.scenes} scenes, {args.size}, objects {args.sizes} px): "
                                       f"{protocol}, {mode} queries")
        eval_dev.run(run)


if __name__ == "__main__":
    main()
