"""The operations behind the CLI, as importable functions."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Preset, load_preset
from .dasr.query import query_views
from .errors import InputError, LibraryError, VidsearchError
from .follow import FOLLOW_FRAMES, follow_segments
from .library import CATALOG, Library, content_key
from .queries import Query, load_image, make_queries
from .rerank import Matcher, refine_hits, rerank_segments, verify_matches
from .search import SearchResult, fuse, search
from .verify import Verdict
from .video import Sampler, open_source, probe, read_ahead


# ----------------------------------------------------------------------------- index


@dataclass
class IndexReport:
    path: str
    status: str  # indexed | replaced | unchanged | duplicate | failed
    frames: int = 0
    regions: int = 0
    seconds: float = 0.0
    note: str = ""


def resolve_preset(lib: Library, name: str | None) -> Preset:
    stored = lib.preset()
    if name is None:
        return stored or load_preset("default")
    preset = load_preset(name)
    lib.check_preset(preset)
    return preset


def demo_library(root: Path, preset: str) -> str | None:
    """The demo's own library at `root`, emptied where an earlier run built it with another
    preset or an earlier version of this one (after an upgrade changed a preset, the demo would
    otherwise refuse to run). Returns a note for the user where it was emptied."""
    import shutil

    if not (root / CATALOG).is_file():
        return None
    lib = Library.open(root)
    try:
        lib.check_preset(load_preset(preset))
        return None
    except LibraryError:
        pass
    finally:
        lib.close()
    shutil.rmtree(root)
    return f"{root} held the demo's library of an earlier run, built with another version of its preset: started afresh"


def _engine(preset: Preset, device: str, weights: str | None):
    from .dasr.engine import Engine

    return Engine(preset, device, weights)


def index_video(lib: Library, engine, path: Path, info, key: str, sampler: Sampler, batch: int, decoder: str,
                on_progress=None, replaces: int | None = None, stop_after: int | None = None,
                decode_workers: int = 1, original: str | None = None) -> IndexReport:
    """Decode, extract and commit one video, already probed (`info`) and hashed (`key`);
    the caller holds the writer lock."""
    start = time.perf_counter()
    from .dasr.views import decode_long_side

    long_side = decode_long_side(info.width, info.height, engine.preset)
    source = open_source(path, decoder, long_side, info=info, workers=decode_workers)
    vid = lib.begin_video(path, key, info, original)
    try:
        return _extract_and_commit(lib, engine, path, info, source, sampler, batch, vid, on_progress,
                                   replaces, stop_after, start)
    except BaseException:
        try:  # roll back this video's pending row now; a kill -9 leaves it to the next writer
            lib.remove_video(vid)
        except Exception:
            pass
        raise


def _extract_and_commit(lib, engine, path, info, source, sampler, batch, vid, on_progress, replaces,
                        stop_after, start) -> IndexReport:
    from . import shots
    from .extract import ShardBuilder, shard_notes

    shard = ShardBuilder(info.width, info.height, engine.dim)
    cuts = shots.SampleCuts() if shots.available() else None
    for group in read_ahead(source.frames(sampler), batch):
        shard.add(engine, group)
        if cuts is not None:
            cuts.feed([f.image for f in group])
        if on_progress:
            on_progress(len(group))
        if stop_after is not None and shard.frames >= stop_after:  # tests: simulate a crash mid-video
            raise KeyboardInterrupt
    if not shard.frames:
        raise InputError(f"{path}: no frame could be decoded" + (f" ({source.stopped_at})" if source.stopped_at else ""))
    arrays = shard.arrays()
    if cuts is not None:
        arrays["shot_cut"] = cuts.positions()
    note = "; ".join(shard_notes(info, sampler, shard.sample_time[-1], source.stopped_at))
    lib.commit_video(vid, arrays, info.has_pts, note, replaces=replaces)
    return IndexReport(str(path), "replaced" if replaces else "indexed", shard.frames, len(arrays["frame"]),
                       time.perf_counter() - start, note)


def index_videos(paths: list[str], library: str | None = None, preset: str | None = None,
                 fps: float | None = None, every_n: int | None = None, device: str = "auto",
                 batch: int = 8, decoder: str = "decord", weights: str | None = None, wait: float = 0.0,
                 progress=None, stop_after: int | None = None, decode_workers: int | None = None,
                 proxy_of: list[str] | None = None, ray: str | None = None, ray_workers: int | None = None,
                 chunk_frames: int | None = None) -> list[IndexReport]:
    """Index videos into the library; unchanged ones are skipped, changed ones re-indexed.
    With `proxy_of` (folders of camera originals), each video is a proxy: its original is found
    there by name and recorded, and results point at it (proxies.py). With `ray` ("local", "auto"
    or a cluster address), extraction runs on Ray Data (ray_index.py): `ray_workers` extract
    actors (default: one per GPU, else one), long videos in chunks of `chunk_frames` samples.

    `progress(path, total_frames)` returns a callback taking a number of new frames."""
    if fps is not None and every_n is not None:
        raise InputError("give --fps or --every-n, not both")
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    Sampler(fps=fps if fps is not None else 1.0, every_n=every_n)  # validates --fps / --every-n now
    if decode_workers is None:
        from .video import default_workers

        decode_workers = default_workers()
    if decode_workers < 1:
        raise InputError(f"--decode-workers must be at least 1, got {decode_workers}")
    if ray is not None:
        _check_ray(ray, ray_workers, chunk_frames, batch)
    elif ray_workers is not None or chunk_frames is not None:
        raise InputError("--ray-workers and --chunk-frames are for indexing on Ray: add --ray")
    from .proxies import check_dirs, describe_original, find_original

    original_dirs = check_dirs(proxy_of or [])

    def original_of(path: Path, info) -> str | None:  # where the videos are proxies: the original, as JSON
        return describe_original(info, find_original(path, original_dirs)).to_json() if original_dirs else None
    resolved = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise InputError(f"{p}: no such file")
        if path.is_dir():
            raise InputError(f"{p} is a directory: give video files (e.g. {p}/*.mp4)")
        resolved.append(path.resolve())
    from .library import CATALOG, library_root

    root = library_root(library)
    created = not (root / CATALOG).exists() and not (root.exists() and any(root.iterdir()))
    lib = Library.open(root, create=True)
    reports: list[IndexReport] = []
    jobs: list = []  # with Ray: the videos to extract there
    engine = None
    try:
        with lib.writer(wait):
            chosen = resolve_preset(lib, preset)
            sample_fps = fps if fps is not None else chosen.sample_fps
            for path in resolved:
                try:
                    key = content_key(path)
                    same_path = lib.find_video(path=path)
                    if same_path and same_path.content_key == key:
                        note = ""
                        if original_dirs:  # an indexed proxy whose original is (newly) given
                            original = original_of(path, probe(path))
                            if original != same_path.original:
                                lib.set_original(same_path.id, original)
                                note = f"original: {Path(json.loads(original)['path']).name}"
                        reports.append(IndexReport(str(path), "unchanged", same_path.frames, same_path.regions, note=note))
                        continue
                    same_content = lib.find_video(key=key)
                    if same_content and same_content.path != str(path):
                        reports.append(IndexReport(str(path), "duplicate", note=f"same content as {same_content.path}"))
                        continue
                    info = probe(path)
                    original = original_of(path, info)
                    sampler = Sampler(fps=sample_fps if every_n is None else None, every_n=every_n)
                    if engine is None:
                        # with Ray the actors build their engines: this one checks the weights load
                        engine = _engine(chosen, "cpu" if ray is not None else device, weights)
                        lib.adopt_preset(chosen)
                    expected = (info.frame_count // every_n + 1) if every_n else int(info.duration * sample_fps) + 1
                    tick = progress(path, expected) if progress else None
                    replaces = same_path.id if same_path else None
                    if ray is not None:  # extracted below, all videos in one Ray run
                        jobs.append(_ray_job(lib, path, info, key, original, sampler, chosen, decoder, replaces, tick))
                        continue
                    reports.append(index_video(lib, engine, path, info, key, sampler, batch, decoder, tick,
                                               replaces=replaces, stop_after=stop_after,
                                               decode_workers=decode_workers, original=original))
                except InputError as exc:
                    reports.append(IndexReport(str(path), "failed", note=str(exc)))
            if jobs:
                reports += _index_on_ray(lib, jobs, chosen, device, weights, batch, ray, ray_workers, chunk_frames)
                order = {str(p): i for i, p in enumerate(resolved)}
                reports.sort(key=lambda r: order.get(r.path, len(order)))
            if any(r.status in ("indexed", "replaced") for r in reports) or lib.meta("preset"):
                lib.refresh(lib.preset() or chosen)
    finally:
        committed = bool(lib.videos())
        lib.close()
        if created and not committed:  # a first index that added nothing leaves no library behind
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return reports


def _check_ray(address: str, workers: int | None, chunk_frames: int | None, batch: int) -> None:
    from . import ray_index

    if not ray_index.available():
        raise InputError("--ray needs Ray Data: pip install 'vidsearch[ray]' (or index without --ray)")
    if workers is not None and workers < 1:
        raise InputError(f"--ray-workers must be at least 1, got {workers}")
    if chunk_frames is not None and (chunk_frames < batch or chunk_frames % batch):
        raise InputError(f"--chunk-frames must be a multiple of --batch ({batch}), got {chunk_frames}")


def _ray_job(lib: Library, path: Path, info, key: str, original: str | None, sampler: Sampler, preset: Preset,
             decoder: str, replaces: int | None, tick):
    from .dasr.views import decode_long_side
    from .ray_index import Job

    vid = lib.begin_video(path, key, info, original)
    return Job(path, info, vid, sampler, decode_long_side(info.width, info.height, preset), decoder, replaces, tick)


def _index_on_ray(lib: Library, jobs: list, preset: Preset, device: str, weights: str | None, batch: int,
                  address: str, workers: int | None, chunk_frames: int | None) -> list[IndexReport]:
    """Extract the pending videos on Ray and commit each as it completes; what did not commit
    (a failure, an interrupt) is rolled back to how it was."""
    from . import ray_index

    start = time.perf_counter()
    reports = []
    left = {job.video_id: job for job in jobs}
    run = ray_index.new_run()
    parts = lib.parts_dir(run)
    try:
        for out in ray_index.run(jobs, parts, preset, device, weights, batch, address, workers, chunk_frames):
            job = out.job
            del left[job.video_id]
            if out.error:
                lib.remove_video(job.video_id)
                reports.append(IndexReport(str(job.path), "failed", note=out.error))
                continue
            lib.commit_video(job.video_id, out.arrays, job.info.has_pts, out.note, replaces=job.replaces)
            reports.append(IndexReport(str(job.path), "replaced" if job.replaces else "indexed", out.frames,
                                       out.regions, time.perf_counter() - start, out.note))
    finally:
        for vid in left:  # interrupted: these never committed
            try:
                lib.remove_video(vid)
            except Exception:
                pass
        lib.drop_parts()
    return reports


# ----------------------------------------------------------------------------- find


@dataclass
class FindResult:
    query: list[Query]
    library: str
    preset: str
    result: SearchResult
    warnings: list[str]
    verdict: Verdict | None = None  # how re-ranked segments were kept or dropped (verify.py)

    def to_dict(self) -> dict:
        return {
            "query": {"images": [q.to_dict() for q in self.query], "threshold": round(self.result.threshold, 4),
                      "match_threshold": (None if self.result.match_threshold is None
                                          else round(self.result.match_threshold, 4)),
                      "regions_scored": self.result.regions_scored,
                      "verify": self.verdict.to_dict() if self.verdict else None},
            "library": self.library,
            "preset": self.preset,
            "segments": [s.to_dict() for s in self.result.segments],
        }


def find(images: list[str], boxes: list[str] | None = None, library: str | None = None, top: int = 20,
         min_score: float | None = None, query_video: str | None = None, at: str | None = None,
         device: str = "auto", weights: str | None = None, preset: str | None = None, refine: bool = True,
         refine_frames: int | None = None, progress=None, snap: str = "shots",
         rerank: int | None = None, verify: bool = True, follow: int | None = None) -> FindResult:
    """Search the library. The best hits of the first `rerank` segments (default RERANK_DEPTH;
    0: none; RERANK_LOOKS hits each) are matched with the query (refine.py) and those segments
    ordered by the match, above the rest; with `verify`, those segments are taken at the background's cut alone
    (search.auto_thresholds) and those whose match does not stand out from the library's
    background are dropped (verify.py), and the segments kept are followed to the sampled frames
    beside them by the match (follow.py; at most `follow` frames matched, by default 200 on a GPU
    and 40 on the CPU; 0: off). With `refine`, the boxes of the frames shown (the
    re-ranked hits, then every segment's best hit, then the rest, up to `refine_frames`: by
    default 200 on a GPU, 10 on the CPU) are looked for again with the query (the re-ranked
    hits' whole-frame pass only once verification has kept their segment). `snap` shots
    widens segments to whole shots (where the video was indexed with shot detection), samples
    leaves them on sampled frames. `progress(what, total)` returns a callback taking a number
    of frames."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    if rerank is not None and rerank < 0:
        raise InputError(f"--rerank must be 0 (off) or a number of segments, got {rerank}")
    if follow is not None and follow < 0:
        raise InputError(f"--follow must be 0 (off) or a number of frames, got {follow}")
    if snap not in ("shots", "samples"):
        raise InputError(f"--snap must be shots or samples, got {snap!r}")
    lib = Library.open(library)
    try:
        stored = lib.preset()
        if stored is None:
            raise LibraryError(f"library {lib.root} has no videos yet: run vidsearch index first")
        if preset is not None:
            lib.check_preset(load_preset(preset))
        queries = make_queries(images, boxes or [], query_video, at)
        engine = _engine(stored, device, weights)
        index, videos = lib.load_index()
        sizes = sorted({(v.width, v.height) for v in videos})
        views = [query_views(engine, q.image, q.box, sizes) for q in queries]
        # view 0 of all queries fused (several views of one object), plus each query's scale views
        raw = np.stack([fuse([v[0] for v in views])] + [x for v in views for x in v[1:]])
        w = lib.index_whitening  # the one the index was built with, not a later read of the file
        gpu = engine.device.type == "cuda"
        from .refine import RERANK_DEPTH

        depth = RERANK_DEPTH if rerank is None else rerank
        # with verification, the first `depth` segments are taken deeper: their match decides
        qv = w.apply(raw) if w is not None else raw
        result = search(lib, index, qv, top=max(top, depth),
                        min_score=min_score, match_depth=depth if verify else 0)
        notes = [m for q in queries for m in q.warnings] + ([result.note] if result.note else [])
        # one set of templates and decoded-video probes for re-ranking and boxes
        matcher = Matcher(engine, queries) if result.segments and (depth or refine) else None
        verdict = None
        deferred: list = []  # re-ranked hits whose box waits for verification (whole-frame pass)
        if depth and result.segments:
            # on the segments of sampled frames, before they widen to shots: in a long take the
            # object comes and goes, and each of its moments is matched and verified on its own
            result.segments, rerank_notes = rerank_segments(engine, queries, result.segments, depth, refine, progress,
                                                            matcher=matcher, deferred=deferred)
            notes += rerank_notes
            if verify:
                result.segments, verdict, verify_notes = verify_matches(lib, videos, matcher, result.segments, gpu,
                                                                        progress)
                notes += verify_notes
                budget = FOLLOW_FRAMES["cuda" if gpu else "cpu"] if follow is None else follow
                if verdict is not None and budget:
                    result.segments, follow_notes = follow_segments(lib, matcher, result.segments, verdict, qv,
                                                                    budget, progress)
                    notes += follow_notes
        if snap == "shots" and result.segments:
            from .shots import snap_to_shots

            result.segments, snap_notes = snap_to_shots(
                result.segments, lambda v: lib.load_shard(v.id, ("sample_frame", "sample_time", "shot_cut")))
            notes += snap_notes
        result.segments = result.segments[:top]
        if refine and result.segments:
            limit = refine_frames or (200 if gpu else 10)
            # re-ranked hits' deferred whole-frame passes are made there (only `refine` defers them)
            notes += refine_hits(engine, queries, result.segments, limit, progress, matcher, deferred)
        _, bad = lib.readable_videos()
        notes += [f"skipped {v.path}: its shard is unreadable ({why}); re-index it" for v, why in bad]
        return FindResult(queries, str(lib.root), stored.name, result, notes, verdict)
    finally:
        lib.close()


# ----------------------------------------------------------------------------- pictures


def best_frames(segments) -> dict[int, np.ndarray]:
    """Full-resolution best frame per segment (by position); missing files are skipped."""
    from .video import FrameGrabber

    return dict(FrameGrabber().grab([(s.video.path, s.best.time, s.best.frame) for s in segments]))


def write_overlays(segments, frames: dict[int, np.ndarray], out_dir: str | Path) -> list[Path]:
    """One overlay PNG per segment (best frame, box, label) and contact-sheet.png."""
    from .render import contact_sheet, crop_box, draw_box, save_png

    out_dir = Path(out_dir)
    written, tiles = [], []
    for i, seg in enumerate(segments):
        if i not in frames:
            continue
        d = seg.to_dict()
        label = f"#{i + 1} {d['score']:.2f} {d['best']['tc']}"  # the picture's own time, not the segment's start
        name = f"segment-{i + 1:03d}_{Path(seg.video.path).stem[:40]}_{d['start_tc'].replace(':', '-').replace(';', '-')}.png"
        written.append(save_png(draw_box(frames[i], seg.best.box, label), out_dir / name))
        tiles.append((crop_box(frames[i], seg.best.box, pad=0.25), f"#{i + 1} {d['best']['tc']} {d['score']:.2f}"))
    if tiles:
        written.append(save_png(contact_sheet(tiles), out_dir / "contact-sheet.png"))
    return written


# ----------------------------------------------------------------------------- status / remove


def status(library: str | None = None) -> dict:
    lib = Library.open(library)
    try:
        good, bad = lib.readable_videos()
        preset = lib.preset()
        w = lib.whitening()
        current, index_bytes = lib.index_state()
        return {
            "library": str(lib.root),
            "preset": preset.name if preset else None,
            "backbone": preset.backbone if preset else None,
            "fingerprint": preset.fingerprint() if preset else None,
            "videos": [{"id": v.id, "path": v.path, "fps": v.fps, "duration": v.duration, "frames": v.frames,
                        "regions": v.regions, "timestamps": "pts" if v.has_pts else "frame/fps (no usable pts)",
                        "start_tc": v.start_tc, "note": v.note, "indexed_at": v.indexed_at,
                        "original": json.loads(v.original)["path"] if v.original else None} for v in good],
            "unreadable": [{"path": v.path, "why": why} for v, why in bad],
            "frames": sum(v.frames for v in good),
            "regions": sum(v.regions for v in good),
            "whitening": {"version": w.version, "fitted_on": w.fitted_on, "dims": int(w.proj.shape[0])} if w else None,
            "index": {"current": current, "bytes": index_bytes},
        }
    finally:
        lib.close()


def indexed_paths(library: str | None = None) -> list[str]:
    """Paths of the library's videos; none where no library has been made yet."""
    from .library import CATALOG, library_root

    if not (library_root(library) / CATALOG).is_file():
        return []
    lib = Library.open(library)
    try:
        return [v.path for v in lib.videos()]
    finally:
        lib.close()


def remove(videos: list[str], library: str | None = None, wait: float = 0.0) -> list[str]:
    lib = Library.open(library)
    removed = []
    try:
        with lib.writer(wait):
            for v in videos:
                path = Path(v).expanduser().resolve()
                row = lib.find_video(path=path)
                if row is None:
                    raise InputError(f"{v} is not in library {lib.root}: see `vidsearch status`")
                lib.remove_video(row.id)
                removed.append(row.path)
            preset = lib.preset()
            if preset:
                lib.refresh(preset)
    finally:
        lib.close()
    return removed


def doctor() -> tuple[list[tuple[str, str, bool]], bool]:
    """(check, detail, ok) rows; ok overall when everything the default preset needs is there."""
    import platform

    rows: list[tuple[str, str, bool]] = []

    def check(name: str, fn) -> None:
        try:
            detail, ok = fn()
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}"[:160], False
        rows.append((name, detail, ok))

    rows.append(("python", platform.python_version(), True))

    def torch_check():
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU (CPU will be used)"
        return f"torch {torch.__version__}; {cuda}", True

    def tv():
        import torchvision
        from torchvision.ops import nms  # noqa: F401

        return f"torchvision {torchvision.__version__}", True

    def decord_check():
        from .video import import_decord

        decord = import_decord()

        return f"decord {getattr(decord, '__version__', '?')}", True

    def av_check():
        import av

        return f"PyAV {av.__version__} (FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec)", True

    def faiss_check():
        import faiss

        gpu = "GPU" if hasattr(faiss, "StandardGpuResources") else "CPU"
        return f"faiss {faiss.__version__} ({gpu})", True

    def weights_check():
        from .backbones import weights_available

        ok, where = weights_available(load_preset("default").backbone)
        return where, ok

    def otio_check():
        import opentimelineio as otio

        return f"OpenTimelineIO {otio.__version__}", True

    for name, fn in [("torch", torch_check), ("torchvision", tv), ("decord", decord_check), ("pyav", av_check),
                     ("faiss", faiss_check), ("default weights", weights_check), ("opentimelineio", otio_check)]:
        check(name, fn)
    for name in ("resnet50", "vgg16"):
        from .backbones import weights_available

        ok, where = weights_available(name)
        rows.append((f"{name} weights (optional)", where, True if not ok else ok))
    return rows, all(ok for _, _, ok in rows)


warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
__all__ = ["index_videos", "find", "status", "remove", "doctor", "make_queries", "load_image", "VidsearchError"]
