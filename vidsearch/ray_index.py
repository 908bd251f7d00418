"""Indexing on Ray Data (the optional `ray` extra): many videos, many machines, one library.

The writer (driver) does what plain `index` does before and after extraction: it holds the
library's lock, skips unchanged videos, records a pending row per video, and at the end
commits each video and updates the index once. In between, each video is planned into
chunks of sampled frames (long videos into several, each starting near a keyframe so that
no chunk decodes much of another's), and Ray Data runs:

    chunks -> decode (CPU tasks, decord; PyAV for files without timestamps)
           -> extract (an actor pool: one per GPU, or CPU actors where there is none)

Each extract call writes its piece of the video's shard to `parts/<run>/` in the library
(shared storage on a cluster) and hands back a small summary; the driver joins a video's
pieces in order and commits it as soon as all of them are in. A killed worker is retried by
Ray (a piece is written atomically, so a retry just writes it again); a killed driver leaves
pending rows and pieces that the next writer removes (Library.recover), and that run indexes
the unfinished videos again, as plain `index` does.

Frames are planned and grouped into engine batches exactly as plain `index` groups them, so
both produce the same regions (tests/test_ray_index.py).
"""

from __future__ import annotations

import os
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .config import Preset
from .errors import ClusterError, InputError
from .extract import ShardBuilder, join, shard_notes
from .video import DecordSource, Frame, Sampler, VideoInfo, decode_run, open_source, probe, scaled_size

CHUNK_BYTES = 256 << 20  # decoded frames per chunk: what one task may hold in memory
MAX_CHUNK = 256  # sampled frames per chunk at most, so long videos spread over workers
DECODE_RUN = 32  # frames per decoder call within a chunk, as DecordSource reads them
# Tests: kill the extract worker (SIGKILL, once) when it reaches the second piece of a video.
KILL_ENV = "VIDSEARCH_TEST_KILL_RAY_WORKER"


@dataclass
class Job:
    """One video for the run: probed, hashed and given its pending row by the driver."""

    path: Path
    info: VideoInfo
    video_id: int
    sampler: Sampler
    long_side: int
    decoder: str
    replaces: int | None = None
    tick: Callable[[int], None] | None = None


@dataclass
class Outcome:
    """What became of a job: its shard arrays and notes, or the one-line reason it failed."""

    job: Job
    arrays: dict[str, np.ndarray] | None = None
    note: str = ""
    error: str = ""
    frames: int = 0
    regions: int = 0


@dataclass
class _Pieces:
    last: int | None = None
    rows: dict[int, dict] = field(default_factory=dict)

    def complete(self) -> bool:
        return self.last is not None and all(k in self.rows for k in range(self.last + 1))


def available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401 (the extra installs both)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- planning


def chunk_length(width: int, height: int, batch: int) -> int:
    """Sampled frames per chunk: as many as CHUNK_BYTES of decoded frames hold, up to MAX_CHUNK,
    a whole number of engine batches."""
    fit = max(1, CHUNK_BYTES // max(1, width * height * 3))
    return max(batch, min(MAX_CHUNK, fit) // batch * batch)


def split_at_keyframes(wanted: list[int], keys: list[int], length: int, batch: int) -> list[list[int]]:
    """Split the sampled frames into chunks of about `length`. Each boundary lies on a whole
    engine batch (so the batches are those of a plain run), within half a chunk of its place;
    where a keyframe falls in that range, at the sample closest after one (so the chunk
    decodes few frames only to reach its start), else at its place."""
    keys = np.array(sorted(keys) or [0])
    bounds = [0]
    while len(wanted) - bounds[-1] > length + length // 2:
        target = bounds[-1] + length
        options = [p for p in range(max(bounds[-1] + 1, target - length // 2), min(len(wanted) - 1, target + length // 2) + 1)
                   if p % batch == 0] or [target]
        inside = (keys > wanted[options[0]]) & (keys <= wanted[options[-1]])

        def cost(p: int) -> tuple[int, int]:
            key = keys[max(0, int(np.searchsorted(keys, wanted[p], side="right")) - 1)]
            return (int(wanted[p] - key) if inside.any() else 0), abs(p - target)
        bounds.append(min(options, key=cost))
    bounds.append(len(wanted))
    return [wanted[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def plan(job: Job, batch: int, chunk_frames: int | None = None) -> list[dict]:
    """The chunk rows of one video. Files decord cannot seek in (no timestamps) or decode right
    (DecordSource.gives_rgb), or that ask for PyAV, are one chunk that the decode task splits as
    it goes."""
    w, h = scaled_size(job.info.width, job.info.height, job.long_side)
    length = chunk_frames or chunk_length(w, h, batch)
    base = {"video_id": job.video_id, "path": str(job.path), "long_side": job.long_side,
            "width": job.info.width, "height": job.info.height, "per_piece": length,
            "fps": job.sampler.fps or 0.0, "every_n": job.sampler.every_n or 0}
    source = open_source(job.path, job.decoder, job.long_side, info=job.info)
    vr = source.open() if isinstance(source, DecordSource) else None
    if vr is None or not source.gives_rgb(vr):
        return [{**base, "pyav": True, "chunk": 0, "chunks": 1, "frames": np.zeros(0, np.int64), "times": np.zeros(0)}]
    wanted, stamps = source.plan(job.sampler, vr)
    keys = [int(k) for k in vr.get_key_indices()]
    chunks = split_at_keyframes(wanted, keys, length, batch) or [[]]
    return [{**base, "pyav": False, "chunk": c, "chunks": len(chunks), "frames": np.array(idx, np.int64),
             "times": np.array([stamps[i] for i in idx], np.float64)} for c, idx in enumerate(chunks)]


# ----------------------------------------------------------------------------- workers


def _pieces_of(row: dict, per_piece: int) -> Iterator[tuple[list[Frame], str | None, bool, int, bool]]:
    """Decode one chunk row: (frames, where decoding stopped if it did, whether the timestamps
    were usable, the piece's number within the video, whether it is the video's last piece)."""
    path, long_side = row["path"], int(row["long_side"])
    if row["pyav"]:  # PyAV picks the samples as it decodes: pieces are cut as they fill
        info = probe(path)
        sampler = Sampler(fps=float(row["fps"]) or None, every_n=int(row["every_n"]) or None)
        source = open_source(path, "pyav", long_side, info=info)
        piece: list[Frame] = []
        number = 0
        for f in source.frames(sampler):
            piece.append(f)
            if len(piece) == per_piece:
                yield piece, None, info.has_pts, number, False
                piece, number = [], number + 1
        yield piece, source.stopped_at, info.has_pts, number, True
        return
    w, h = scaled_size(int(row["width"]), int(row["height"]), long_side)  # the driver probed the file
    frames, times = [int(i) for i in row["frames"]], [float(t) for t in row["times"]]
    got: list[Frame] = []
    stopped = None
    for start in range(0, len(frames), DECODE_RUN):
        idx = frames[start : start + DECODE_RUN]
        try:
            batch = decode_run(path, idx, w, h)
        except Exception as exc:  # a truncated or damaged stream: keep what decoded
            stopped = f"decoding stopped near frame {idx[0]} ({type(exc).__name__})"
            break
        got += [Frame(i, times[start + j], img) for j, (i, img) in enumerate(zip(idx, batch))]
    yield got, stopped, True, int(row["chunk"]), int(row["chunk"]) == int(row["chunks"]) - 1


def decode_chunk(row: dict) -> Iterator[dict]:
    """Ray Data flat_map: a chunk row -> rows of decoded frames ("pieces"), numbered within the
    video. A decord chunk is one piece; a PyAV video is cut into pieces as it decodes."""
    try:
        for frames, stopped, has_pts, piece, last in _pieces_of(row, int(row["per_piece"])):
            yield _piece_row(row, frames, piece, last, stopped=stopped or "", has_pts=has_pts)
    except InputError as exc:
        yield _piece_row(row, [], int(row["chunk"]), int(row["chunk"]) == int(row["chunks"]) - 1, error=str(exc))


def _piece_row(row: dict, frames: list[Frame], piece: int, last: bool, stopped: str = "", error: str = "",
               has_pts: bool = True) -> dict:
    images = np.stack([f.image for f in frames]) if frames else np.zeros((0, 2, 2, 3), np.uint8)
    return {"video_id": int(row["video_id"]), "piece": piece, "last": bool(last), "width": int(row["width"]),
            "height": int(row["height"]), "index": np.array([f.index for f in frames], np.int64),
            "time": np.array([f.time for f in frames], np.float64), "images": images,
            "stopped": stopped, "error": error, "has_pts": bool(has_pts)}


class Extractor:
    """Ray Data actor: one engine, kept for the whole run; each call extracts a piece's regions
    in engine batches and writes them (with the detector's thumbnails) to the run's folder."""

    def __init__(self, preset: Preset, device: str, weights: str | None, batch: int, parts: str,
                 threads: int = 0) -> None:
        import torch

        from .dasr.engine import Engine

        if threads:
            torch.set_num_threads(threads)
        self.engine = Engine(preset, device, weights)
        self.batch, self.parts = batch, Path(parts)

    def __call__(self, row: dict) -> dict:
        _maybe_die(row)
        from . import shots
        from .library.files import atomic_path

        images = row["images"]
        frames = [Frame(int(i), float(t), img) for i, t, img in zip(row["index"], row["time"], images)]
        shard = ShardBuilder(int(row["width"]), int(row["height"]), self.engine.dim)
        for start in range(0, len(frames), self.batch):
            shard.add(self.engine, frames[start : start + self.batch])
        arrays = shard.arrays()
        if shots.available():
            arrays["thumb"] = np.stack([shots.thumbnail(f.image) for f in frames]) if frames else \
                np.zeros((0, shots.THUMB[1], shots.THUMB[0], 3), np.uint8)
        path = self.parts / f"v{row['video_id']}.p{row['piece']}.npz"
        if not self.parts.is_dir():  # the run is over (its driver died): write nothing
            raise RuntimeError(f"{self.parts} is gone")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return {"video_id": int(row["video_id"]), "piece": int(row["piece"]), "last": bool(row["last"]),
                "frames": len(frames), "regions": len(arrays["frame"]), "stopped": str(row["stopped"]),
                "error": str(row["error"]), "has_pts": bool(row["has_pts"]), "part": str(path)}


def _maybe_die(row: dict) -> None:
    marker = os.environ.get(KILL_ENV)
    if marker and int(row["piece"]) == 1 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- driver


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to), or start a
    local one in this process (None or "local")."""
    import logging

    import ray

    if ray.is_initialized():
        return
    # Ray's core and Ray Data log progress and advice to the terminal; vidsearch shows its own
    # progress, and failures still arrive as exceptions.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address in (None, "", "local"):
            cores = os.cpu_count() or 1
            # Logical CPUs are Ray's scheduling budget: CPU extract actors each take one, and one
            # more is always left for the decode tasks.
            ray.init(num_cpus=cores + 1, **quiet)
        else:
            ray.init(address=address, **quiet)
    except ConnectionError as exc:
        raise InputError(f"cannot reach a Ray cluster at {address!r} ({exc}): start one (ray start --head) "
                         "or leave out the address to run on this machine") from None


def pool_shape(device: str, workers: int | None) -> tuple[int, dict]:
    """How many extract actors and what each asks of Ray: one GPU each where the cluster has
    GPUs (and the device allows), else one logical CPU each."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus and device != "cpu":
        return workers or gpus, {"num_gpus": 1, "num_cpus": 1}
    return workers or 1, {"num_cpus": 1}


def run(jobs: list[Job], parts: Path, preset: Preset, device: str, weights: str | None, batch: int,
        address: str | None = None, workers: int | None = None, chunk_frames: int | None = None) -> Iterator[Outcome]:
    """Extract every job on Ray; yield each video's outcome as soon as all its pieces are in."""
    import ray.data

    from . import shots

    connect(address)
    n, resources = pool_shape(device, workers)
    gpu = "num_gpus" in resources
    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    # CPU actors on this machine share its cores; on a cluster each keeps torch's own choice
    threads = max(1, (os.cpu_count() or 1) // n) if not gpu and address in (None, "", "local") else 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows, by_id = [], {}
    for job in jobs:
        try:
            rows += plan(job, batch, chunk_frames)
            by_id[job.video_id] = job
        except InputError as exc:
            yield Outcome(job, error=str(exc))
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.flat_map(decode_chunk, num_cpus=min(1.0, max(0.25, cores / 8)))
    # Ray Data's actor pools restart a dead actor and retry its call by default: what a killed
    # worker needs, since a piece is written atomically and writing it again is harmless.
    ds = ds.map(Extractor, fn_constructor_kwargs={"preset": preset, "device": "cuda" if gpu else "cpu",
                                                  "weights": weights, "batch": batch, "parts": str(parts),
                                                  "threads": threads},
                compute=ray.data.ActorPoolStrategy(size=n), **resources)
    pending = {vid: _Pieces() for vid in by_id}
    try:
        yield from _collect(ds.iter_rows(), pending, by_id, shots.available())
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"the Ray run failed ({first[:300]}); videos not yet committed were rolled back: "
                           "fix the cause (is vidsearch installed on every node, the library on shared "
                           "storage?) and run the same command again") from None


def _collect(rows, pending: dict[int, _Pieces], by_id: dict[int, Job], with_cuts: bool) -> Iterator[Outcome]:
    """Gather the pieces as they come back; a video is done once all of its pieces are in."""
    for row in rows:
        vid = int(row["video_id"])
        if vid not in pending:  # a retried piece of a video already committed
            continue
        job, pieces = by_id[vid], pending[vid]
        pieces.rows[int(row["piece"])] = row
        if row["last"]:
            pieces.last = int(row["piece"]) if pieces.last is None else max(pieces.last, int(row["piece"]))
        if job.tick and row["frames"]:
            job.tick(int(row["frames"]))
        if pieces.complete():
            del pending[vid]
            yield _outcome(job, [pieces.rows[k] for k in range(pieces.last + 1)], with_cuts)
    for vid in pending:  # cannot happen unless Ray lost rows: say so rather than commit a hole
        yield Outcome(by_id[vid], error="the Ray run ended before all of this video's pieces came back")


def _outcome(job: Job, rows: list[dict], with_cuts: bool) -> Outcome:
    """Join a video's pieces (up to the first that stopped decoding) into its shard arrays."""
    from . import shots

    kept = []
    stopped = None
    for row in rows:
        if row["error"]:
            return Outcome(job, error=str(row["error"]))
        kept.append(row)
        if row["stopped"]:
            stopped = str(row["stopped"])
            break
    pieces = [dict(np.load(row["part"])) for row in kept]
    frames = sum(int(row["frames"]) for row in kept)
    if not frames:
        return Outcome(job, error=f"{job.path}: no frame could be decoded" + (f" ({stopped})" if stopped else ""))
    arrays = join([p for p, row in zip(pieces, kept) if int(row["frames"])])
    thumbs = arrays.pop("thumb", None)
    if with_cuts and thumbs is not None:
        cuts = shots.SampleCuts()
        cuts.feed_thumbnails(thumbs)
        arrays["shot_cut"] = cuts.positions()
    job.info.has_pts = job.info.has_pts and all(bool(row["has_pts"]) for row in kept)
    note = "; ".join(shard_notes(job.info, job.sampler, float(arrays["sample_time"][-1]), stopped))
    return Outcome(job, arrays, note, frames=frames, regions=len(arrays["frame"]))


def new_run() -> str:
    return uuid.uuid4().hex[:12]
