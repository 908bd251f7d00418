"""Pipeline throughput: decode, engine, library writes, end to end, and search latency.

    python bench/pipeline.py --minutes 1 2 --device cpu --engine-frames 4 --search-sizes 1000000 10000000
    python bench/pipeline.py --video movie.mp4 --device cuda --engine-frames 64

Generates long synthetic H.264 videos (panning real photos, 1080p or --size, 24 fps) unless
--video is given; indexes each end to end, so the times for 1 and 2 minutes show whether time grows
linearly; prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vidsearch import api
from vidsearch.config import load_preset
from vidsearch.sample import skimage_photo
from vidsearch.video import Sampler, open_source, probe


def synthetic_video(path: Path, minutes: float, size=(1920, 1080), fps: int = 24, gop_s: float = 2.0) -> Path:
    """Real photos, panned and cut every 5 s, encoded with libx264 (fast to make, real to decode),
    a keyframe every `gop_s` seconds."""
    import av

    w, h = size
    shots = []
    for name in ("rocket", "coffee", "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry"):
        img = skimage_photo(name)
        s = max(w / img.shape[1], h / img.shape[0]) * 1.3
        shots.append(np.asarray(Image.fromarray(img).resize((int(img.shape[1] * s) + 1, int(img.shape[0] * s) + 1))))
    n = int(minutes * 60 * fps)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "23", "g": str(int(gop_s * fps))}
        for i in range(n):
            big = shots[(i // (5 * fps)) % len(shots)]
            u = (i % (5 * fps)) / (5 * fps)
            x = int((big.shape[1] - w) * u)
            y = int((big.shape[0] - h) * 0.5)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(big[y : y + h, x : x + w]), format="rgb24")
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def bench_decode(path: Path, decoder: str, preset_name: str, workers: int | None = None) -> dict:
    """Decoding as `index` does it: at the size the preset's views need, in its decode threads."""
    from vidsearch.dasr.views import decode_long_side
    from vidsearch.video import default_workers

    info = probe(path)
    workers = workers or default_workers()
    long_side = decode_long_side(info.width, info.height, load_preset(preset_name))
    t0 = time.perf_counter()
    frames = list(open_source(path, decoder, long_side, info=info, workers=workers).frames(Sampler(1.0)))
    dt = time.perf_counter() - t0
    return {"sampled_frames": len(frames), "long_side": long_side, "workers": workers, "seconds": dt,
            "sampled_frames_per_s": len(frames) / dt, "x_realtime": info.duration / dt, "frames": [f.image for f in frames]}


def bench_engine(frames: list[np.ndarray], preset_name: str, device: str, n: int, batch: int) -> dict:
    from vidsearch.dasr.engine import Engine

    engine = Engine(load_preset(preset_name), device)
    batch_frames = np.stack(frames[:n])
    engine.extract_views(batch_frames[:batch])  # warm-up at the batch's shapes
    engine.timings.clear()
    t0 = time.perf_counter()
    regions = 0
    for i in range(0, len(batch_frames), batch):  # as index extracts: every view of the preset
        regions += len(engine.extract_views(batch_frames[i : i + batch]).frame)
    dt = time.perf_counter() - t0
    return {"frames": len(batch_frames), "frames_per_s": len(batch_frames) / dt, "regions_per_frame": regions / len(batch_frames),
            **{f"{k}_ms_per_frame": 1000 * v / len(batch_frames) for k, v in engine.timings.items()}}


def bench_writes(tmp: Path, regions: int = 86_400, dim: int = 320) -> dict:
    """One 2-hour movie's worth of regions (7,200 frames x 12) committed as a shard, 3 times."""
    from types import SimpleNamespace

    from vidsearch.config import Preset
    from vidsearch.library import Library

    lib = Library.open(tmp / "writes", create=True)
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(regions, dim)).astype(np.float16)
    frames = np.repeat(np.arange(regions // 12), 12)[:regions]
    arrays = {"frame": frames, "time": frames.astype(float), "box": np.zeros((regions, 4), np.float32),
              "score": np.zeros(regions, np.float32), "desc": desc, "sample_frame": np.arange(regions // 12),
              "sample_time": np.arange(regions // 12, dtype=float)}
    info = SimpleNamespace(width=1920, height=1080, fps=Fraction(24), duration=7200.0, frame_count=172800,
                           codec="h264", rotation=0, has_pts=True, start_tc=None)
    dummy = tmp / "movie.mp4"
    dummy.write_bytes(b"x")
    times = []
    with lib.writer():
        lib.adopt_preset(Preset(whiten=False))
        for i in range(3):
            t0 = time.perf_counter()
            vid = lib.begin_video(dummy, f"k{i}", info)
            lib.commit_video(vid, arrays, True)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lib.load_index(save=True)
        index_s = time.perf_counter() - t0
    best = min(times)
    return {"regions_per_s": regions / best, "shard_mb": (lib.shard_path(1).stat().st_size / 1e6),
            "seconds_per_movie": best, "index_rebuild_s_3_movies": index_s}


def bench_search(n: int, dim: int = 320, kind: str = "auto", queries: int = 20) -> dict:
    """Latency and memory of search over n random unit regions, with the index the library
    would build for that size (or `kind`); approximate hits re-scored exactly as in a library."""
    import faiss

    from vidsearch.config import Preset
    from vidsearch.library import region_ids
    from vidsearch.library.faiss_index import empty_index, index_kind, training_size
    from vidsearch.search import retrieve

    rng = np.random.default_rng(0)
    preset = Preset(index_type=kind)
    kind = index_kind(n, preset)
    t0 = time.perf_counter()
    stored: list[np.ndarray] = []  # what exact re-scoring reads (the shards, in a library)
    train = None
    if kind in ("ivf", "ivfpq"):  # the library's own layout for n regions (lists, training size)
        train = rng.standard_normal((training_size(n), dim), dtype=np.float32)
        train /= np.linalg.norm(train, axis=1, keepdims=True)
    index = empty_index(kind, dim, n, train, preset)
    if kind != "flat":
        faiss.extract_index_ivf(index).nprobe = preset.nprobe
    name = "Flat" if kind == "flat" else f"IVF{faiss.extract_index_ivf(index).nlist},{'SQ8' if kind == 'ivf' else 'PQ'}"
    chunk = 500_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        v = rng.normal(size=(m, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add_with_ids(v, region_ids(1 + start // chunk, m))
        if kind != "flat" and n <= 2_000_000:
            stored.append(v.astype(np.float16))
    build = time.perf_counter() - t0

    def exact(ids, q):  # scores from the stored float16 vectors, as from the shards
        return np.array([stored[int(i >> 32) - 1][int(i & 0xFFFFFFFF)].astype(np.float32) @ q for i in ids],
                        dtype=np.float32)

    qs = rng.normal(size=(queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    lat = []
    for q in qs:
        t0 = time.perf_counter()
        retrieve(index, q, 0.25, exact=exact if stored else None)  # random data: a few hundred regions pass
        lat.append(time.perf_counter() - t0)
    code = faiss.downcast_index(index.index if kind == "flat" else index).code_size
    return {"regions": n, "index": name + (f" nprobe {preset.nprobe}" if kind != "flat" else ""),
            "index_mb": n * (code + 8) / 1e6, "build_s": build, "rescored": bool(stored),
            "median_ms": 1000 * float(np.median(lat)), "p90_ms": 1000 * float(np.percentile(lat, 90))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", help="a file instead of generated ones")
    ap.add_argument("--videos-dir", help="keep the generated videos here and reuse them (default: made anew in a temp dir)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--size", default="1920x1080", help="generated videos' frame size, WxH (e.g. 3840x2160)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decoder", default="decord")
    ap.add_argument("--decode-workers", type=int, help="decode threads (default: as index, 1 on small machines, up to 8)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--engine-frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--end-to-end", action="store_true", help="also index each video with the full pipeline")
    ap.add_argument("--search-sizes", type=float, nargs="*", default=[1e6])
    ap.add_argument("--search-index", default="auto", choices=["auto", "flat", "ivf", "ivfpq"],
                    help="auto: as the library does (Flat, IVF-SQ8 from 2M regions, IVF-PQ from 50M)")
    ap.add_argument("--search-only", action="store_true", help="only the search latency/memory part")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.search_only:
        args.minutes, args.video = [], None
    tmp = Path(tempfile.mkdtemp(prefix="vidsearch-bench-"))
    report: dict = {"device": args.device, "preset": args.preset, "videos": []}
    try:
        videos = [Path(args.video)] if args.video else []
        made = Path(args.videos_dir) if args.videos_dir else tmp
        made.mkdir(parents=True, exist_ok=True)
        size = tuple(int(v) for v in args.size.lower().split("x"))
        for m in ([] if args.video else args.minutes):
            path = made / (f"synthetic-{m:g}min.mp4" if size == (1920, 1080) else f"synthetic-{m:g}min-{args.size}.mp4")
            if not path.exists():  # written under another name first: a run cut short leaves none half-made
                t0 = time.perf_counter()
                synthetic_video(made / f"partial-{path.name}", m, size).rename(path)
                print(f"made {path.name} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            videos.append(path)
        for v in videos:
            row = {"video": v.name, "duration_s": probe(v).duration}
            dec = bench_decode(v, args.decoder, args.preset, args.decode_workers)
            frames = dec.pop("frames")
            row["decode"] = dec
            row["engine"] = bench_engine(frames, args.preset, args.device, args.engine_frames, args.batch)
            if args.end_to_end:
                t0 = time.perf_counter()
                api.index_videos([str(v)], str(tmp / f"lib-{v.stem}"), args.preset, device=args.device, batch=args.batch,
                                 decoder=args.decoder, decode_workers=args.decode_workers)
                row["end_to_end_s"] = time.perf_counter() - t0
                row["end_to_end_frames_per_s"] = dec["sampled_frames"] / row["end_to_end_s"]
            report["videos"].append(row)
            print(json.dumps(row), file=sys.stderr)
        report["writes"] = None if args.search_only else bench_writes(tmp)
        report["search"] = [bench_search(int(n), kind=args.search_index) for n in args.search_sizes]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [] if not report["videos"] else [
        "| video | decode sampled frames/s (long side, threads) | decode x realtime | engine frames/s (preset's views) | end-to-end s | end-to-end frames/s |",
        "|---|---|---|---|---|---|"]
    for r in report["videos"]:
        lines.append(f"| {r['video']} ({r['duration_s']:.0f} s) | {r['decode']['sampled_frames_per_s']:.1f} ({r['decode']['long_side']}, {r['decode']['workers']}) | "
                     f"{r['decode']['x_realtime']:.0f} | {r['engine']['frames_per_s']:.3f} | "
                     f"{r.get('end_to_end_s', float('nan')):.1f} | {r.get('end_to_end_frames_per_s', float('nan')):.3f} |")
    w = report["writes"]
    lines += [] if w is None else ["", f"library writes: {w['regions_per_s']:.0f} regions/s ({w['shard_mb']:.0f} MB shard for a 2-hour movie "
              f"in {w['seconds_per_movie']:.2f} s); index rebuild for 3 movies {w['index_rebuild_s_3_movies']:.1f} s"]
    lines += [] if not report["search"] else [
        "", "| regions | index | index MB | build s | median ms/query | p90 ms | exact re-scoring |", "|---|---|---|---|---|---|---|"]
    for s in report["search"]:
        lines.append(f"| {s['regions']:,} | {s['index']} | {s['index_mb']:.0f} | {s['build_s']:.0f} | {s['median_ms']:.1f} | "
                     f"{s['p90_ms']:.1f} | {'yes' if s['rescored'] else 'no'} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
