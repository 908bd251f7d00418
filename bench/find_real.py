"""`find` as an editor uses it, on real footage with ground truth: each tracking sequence is
encoded as a video, all of them are indexed into one library (an editor's library holds many
clips), and each is searched with a crop of its object from a frame that was not sampled; every
hit `find` returns is checked against the sequence's box at its frame (a hit in another clip is
a wrong one).

    python bench/find_real.py ../shared/data/instance-dev --work /tmp/find_real --device cpu
    python bench/find_real.py /tmp/small --work /tmp/find_small --encode-fps 1 --query crop

Per sequence: the object's size, how many of the sampled frames showing it are hits (recall),
how many hits are on frames showing it (precision), and how many of those hits' boxes reach
IoU 0.5 with the truth, both as stored (the regions, `--no-refine`) and as `find` shows them
(refined with the query; every hit refined here, where `find` on a CPU refines 10 by default).
The videos and the library stay in --work, so a second run only searches.

Where several sequences show one object (meta.json "instance", as in the generated sets of
bench/small_objects.py), a hit on any of them is a right one, and recall counts the sampled
frames of all of them ("other clips": of those but the query's own). `--query crop` searches
with the box cut out of the query frame, the editor's usual query, instead of frame + box.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from vidsearch import api  # noqa: E402
from vidsearch.evaluate import Sequence, iou, load_sequences  # noqa: E402
from vidsearch.library import Library  # noqa: E402
from vidsearch.sample import write_video  # noqa: E402

FPS = 10  # by default every sequence is encoded as 10 frames/s footage (UAV123@10fps is; the rest are 24-30)


def encode(seq: Sequence, path: Path, fps: float = FPS) -> Path:
    """The sequence's frames as an H.264 video (cropped to even sizes, as yuv420p needs)."""
    from PIL import Image

    if path.is_file():
        return path
    w, h = seq.size[0] // 2 * 2, seq.size[1] // 2 * 2
    frames = [np.asarray(Image.open(p).convert("RGB"))[:h, :w] for p in seq.frames]
    return write_video(path, frames, fps=Fraction(fps).limit_denominator(1001))


def query_frame(seq: Sequence, every: int) -> int:
    """The first frame showing the object that lies halfway between two sampled frames."""
    for i in range(every // 2, len(seq.frames), every):
        if seq.boxes[i] is not None:
            return i
    raise SystemExit(f"{seq.name}: the object is never seen between sampled frames")


def sampled_showing(seq: Sequence, video: Path, handle: Library) -> set[int]:
    """The frames of the sequence's video that were indexed and show its object."""
    row = next(v for v in handle.videos() if Path(v.path).resolve() == video.resolve())
    sampled = [int(f) for f in handle.load_shard(row.id, ("sample_frame",))["sample_frame"]]
    return {f for f in sampled if f < len(seq.boxes) and seq.boxes[f] is not None}


class LibraryFrames:
    """A find_real library's regions by sampled frame: its region vectors as stored, the sorted
    keys of its sampled frames (video id * 10**7 + frame number), each region's frame among
    them, and which of them show a sequence's instance (`showing`)."""

    def __init__(self, lib: Library, videos: list, work: Path, seqs: list[Sequence]) -> None:
        shards = {v.id: lib.load_shard(v.id) for v in videos}
        self.vectors = np.concatenate([shards[v.id]["desc"] for v in videos]).astype(np.float32)
        key = np.concatenate([shards[v.id]["frame"].astype(np.int64) + v.id * 10**7 for v in videos])
        self.frames, self.frame_of = np.unique(key, return_inverse=True)
        by_path = {Path(v.path).resolve(): v for v in videos}
        self.seqs = seqs
        self.keys = {}  # a sequence's name -> the keys of its sampled frames showing its object
        for s in seqs:
            video = work / f"{s.name}.mp4"
            vid = by_path[video.resolve()].id
            self.keys[s.name] = np.array(sorted(sampled_showing(s, video, lib)), np.int64) + vid * 10**7

    def showing(self, seq: Sequence) -> np.ndarray:
        """Over the frames, those that show seq's instance, in any clip."""
        truth = np.zeros(len(self.frames), bool)
        for other in self.seqs:
            if other.instance == seq.instance:
                truth[np.searchsorted(self.frames, self.keys[other.name])] = True
        return truth


def measure(seq: Sequence, video: Path, clips: dict, lib: Path, work: Path, args) -> dict:
    """clips: every video -> (its sequence, its sampled frames showing its object)."""
    from PIL import Image

    every = max(1, round(args.encode_fps / args.fps))
    q = query_frame(seq, every)
    x1, y1, x2, y2 = seq.boxes[q]
    crop = work / f"{seq.name}-query.png"
    image = Image.open(seq.frames[q]).convert("RGB")
    if args.query == "crop":
        image.crop((int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))).save(crop)
        box = None
    else:
        image.save(crop)
        box = f"{x1:.0f},{y1:.0f},{x2 - x1:.0f},{y2 - y1:.0f}"  # find's --box: x,y,w,h
    # right answers: the sampled frames showing this object, in its own clip and any other showing it
    truth = {(v, f): s for v, (s, showing) in clips.items() if s.instance == seq.instance for f in showing}
    own = video.resolve()

    out = {"sequence": seq.name, "size": list(seq.size), "query_frame": q, "sampled_showing": len(truth),
           "other_showing": sum(v != own for v, _ in truth)}
    sides = [max(b[2] - b[0], b[3] - b[1]) for b in seq.boxes if b is not None]
    out["object_px"] = float(np.median(sides))
    out["object_area"] = float(np.median([seq.area_fraction(i) for i, b in enumerate(seq.boxes) if b is not None]))
    for name, kwargs in (("regions", {"refine": False, "rerank": 0}),
                         ("shown", {"refine": True, "refine_frames": 10_000})):
        found = api.find([str(crop)], [box] if box else [], str(lib), top=args.top, device=args.device,
                         verify=args.verify, **kwargs)
        hits = [(Path(s.video.path).resolve(), h) for s in found.result.segments for h in s.hits]
        on = [(v, h) for v, h in hits if (v, h.frame) in truth]
        ious = [iou(tuple(h.box), truth[v, h.frame].boxes[h.frame]) for v, h in on]
        out[f"{name}_hits"] = len(hits)
        out[f"{name}_recall"] = len({(v, h.frame) for v, h in on}) / max(1, len(truth))
        out[f"{name}_other_recall"] = (len({(v, h.frame) for v, h in on if v != own}) / out["other_showing"]
                                       if out["other_showing"] else float("nan"))
        out[f"{name}_precision"] = len(on) / max(1, len(hits))
        out[f"{name}_iou50"] = float(np.mean([v >= 0.5 for v in ious])) if on else 0.0
        out[f"{name}_miou"] = float(np.mean(ious)) if on else 0.0
        out[f"{name}_kinds"] = sorted({h.kind for _, h in on})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a folder of tracking sequences (vidsearch eval's layout)")
    ap.add_argument("--work", default="/tmp/find_real", help="videos and libraries are kept here")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--fps", type=float, default=1.0, help="frames indexed per second of the videos")
    ap.add_argument("--encode-fps", type=float, default=FPS, help="the videos' frame rate (a sequence's frames, one per frame)")
    ap.add_argument("--query", choices=("frame", "crop"), default="frame",
                    help="frame: the query frame with the object's box; crop: the box cut out of it")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="keep the re-ranked segments whose match does not stand out (find --no-verify)")
    ap.add_argument("--only", action="append", default=[], help="a sequence's name (repeatable)")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seqs = [s for s in load_sequences(args.data) if not args.only or s.name in args.only]
    videos = [encode(s, work / f"{s.name}.mp4", args.encode_fps) for s in seqs]
    lib = work / f"lib-{Path(args.preset).stem}"
    api.index_videos([str(v) for v in videos], str(lib), args.preset, fps=args.fps, device=args.device)
    handle = Library.open(str(lib))
    try:
        clips = {v.resolve(): (s, sampled_showing(s, v, handle)) for s, v in zip(seqs, videos)}
    finally:
        handle.close()
    rows = []
    print(f"{len(seqs)} clips in one library, {args.preset} preset, {args.fps:g} frame/s of {args.encode_fps:g} fps, "
          f"{args.query} queries; find's defaults{'' if args.verify else ' without verification'} but every hit refined")
    print("| sequence | frame | object px (area) | sampled frames showing it (other clips) | hits: recall (other "
          "clips) / precision | boxes IoU>=0.5: regions / shown | mean IoU: regions / shown |")
    print("|---|---|---|---|---|---|---|")
    for seq, video in zip(seqs, videos):
        r = measure(seq, video, clips, lib, work, args)
        rows.append(r)
        print(f"| {r['sequence']} | {r['size'][0]}x{r['size'][1]} | {r['object_px']:.0f} ({100 * r['object_area']:.1f} %) "
              f"| {r['sampled_showing']} ({r['other_showing']}) | {r['shown_recall']:.2f} "
              f"({r['shown_other_recall']:.2f}) / {r['shown_precision']:.2f} "
              f"| {r['regions_iou50']:.2f} / {r['shown_iou50']:.2f} | {r['regions_miou']:.2f} / {r['shown_miou']:.2f} |",
              flush=True)
    keys = ("regions_recall", "regions_precision", "shown_recall", "shown_other_recall", "shown_precision",
            "regions_iou50", "shown_iou50", "regions_miou", "shown_miou")
    groups = {"all": rows}
    for seq, r in zip(seqs, rows):  # generated sets: also by the size the object was pasted at
        meta = seq.frames[0].parent.parent / "meta.json"
        px = json.loads(meta.read_text()).get("object_px") if meta.is_file() else None
        if px is not None:
            groups.setdefault(f"{px} px", []).append(r)
    for name, group in groups.items():
        print(f"mean {name} ({len(group)}): " + ", ".join(f"{k} {np.nanmean([r[k] for r in group]):.3f}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
