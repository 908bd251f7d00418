"""Decoding and sampling: decord (default) and PyAV backends behind one small interface.

Frames are numbered in presentation order from 0 (the "decoder frame number"); times are
seconds of media time from the stream's start. Where a container has no usable timestamps
(missing or not increasing, as in some AVI files), time falls back to frame / fps and
`VideoInfo.has_pts` says so. Decoding is sequential (no seek per sample), scaled in the
decoder to the engine's size, and runs ahead of the consumer in a thread with a bounded queue.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from .errors import InputError, VidsearchError


@dataclass
class VideoInfo:
    path: Path
    width: int  # display size, rotation applied
    height: int
    fps: Fraction  # nominal frame rate, exact
    frame_count: int
    duration: float  # seconds
    codec: str
    rotation: int = 0  # degrees clockwise to display upright
    has_pts: bool = True
    start_tc: str | None = None  # the media's own start timecode, when the container has one
    vfr: bool = False
    first_pts: int = 0  # pts of the first frame: media time counts from it


@dataclass
class Frame:
    index: int  # decoder frame number
    time: float  # seconds of media time
    image: np.ndarray  # (H, W, 3) uint8, scaled for the engine


def import_decord():
    """Import decord without its CUDA preloading.

    decord2 dlopens every library under site-packages/nvidia/*/lib with RTLD_GLOBAL, including
    libnvblas, which then takes over BLAS calls of torch and numpy: on a machine without a GPU
    torch's matrix products abort ("CPU Blas library need to be provided"). The CPU build needs
    none of them, so hide the nvidia packages while it loads; a CUDA build that does need them
    falls back to the normal import, with torch loaded first so its BLAS stays its own."""
    import importlib.util
    import sys

    if "decord" in sys.modules:
        return sys.modules["decord"]
    real = importlib.util.find_spec

    def without_nvidia(name, *args, **kwargs):
        return None if name == "nvidia" else real(name, *args, **kwargs)

    importlib.util.find_spec = without_nvidia
    try:
        import decord
    except OSError:
        importlib.util.find_spec = real
        for name in [m for m in sys.modules if m == "decord" or m.startswith("decord.")]:
            del sys.modules[name]
        import torch  # noqa: F401

        import decord
    finally:
        importlib.util.find_spec = real
    return decord


def _open(path: Path):
    import av
    import av.logging

    av.logging.set_level(av.logging.FATAL)  # damaged streams are reported by vidsearch itself

    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory: give video files (e.g. {path}/*.mp4)")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): re-export or re-copy the video")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise InputError(f"{path} is not a video that FFmpeg can read ({type(exc).__name__}): check the file") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream (audio only?): give a video file")
    return container


def _fraction(rate) -> Fraction | None:
    if rate is None:
        return None
    f = Fraction(rate.numerator, rate.denominator) if hasattr(rate, "numerator") else Fraction(rate)
    return f if f > 0 else None


def _first_frames(container, n: int = 24) -> tuple[int, bool, int]:
    """Rotation (degrees clockwise to turn frames upright, from the display matrix), whether
    presentation timestamps are usable (present and increasing), and the first frame's pts,
    from the first frames."""
    rotation, pts = 0, []
    try:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 0:  # PyAV reports the display matrix's counter-clockwise angle
                rotation = int(round(-(getattr(frame, "rotation", 0) or 0))) % 360
            pts.append(frame.pts)
            if i + 1 >= n:
                break
    except Exception:
        pass
    usable = bool(pts) and None not in pts and all(b > a for a, b in zip(pts, pts[1:]))
    return rotation, usable, pts[0] if usable else 0


def probe(path: str | Path) -> VideoInfo:
    """Container facts, exact frame rate and start timecode, read with PyAV."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            tag = getattr(stream, "codec_tag", "") or "unknown"
            raise InputError(f"{path}: its video codec ({tag}) is not supported by this FFmpeg build: "
                             "transcode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)")
        fmt = container.format.name or ""
        if fmt.endswith("_pipe") or fmt in ("image2", "gif") and (stream.frames or 0) <= 1:
            raise InputError(f"{path} is a still image, not a video: to search with it, use find --query {path.name}")
        if ctx.name is None or ctx.width == 0:
            raise InputError(f"{path}: the video codec is not supported by this FFmpeg build")
        fps = _fraction(stream.average_rate) or _fraction(stream.guessed_rate) or _fraction(stream.base_rate)
        if fps is None:
            raise InputError(f"{path}: the container gives no frame rate; re-mux it (ffmpeg -i in -c copy out.mp4)")
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = (stream.frames or 0) / float(fps)
        frames = stream.frames or int(round(duration * fps))
        tc = stream.metadata.get("timecode") or container.metadata.get("timecode")
        for other in container.streams:
            tc = tc or other.metadata.get("timecode")
        vfr = bool(stream.guessed_rate and stream.average_rate and
                   abs(float(stream.guessed_rate) - float(stream.average_rate)) > 0.01)
        rotation, has_pts, first_pts = _first_frames(container)
        width, height = ctx.width, ctx.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(path, width, height, fps, frames, duration, ctx.name, rotation,
                         has_pts, tc, vfr, first_pts)
    finally:
        container.close()


class Sampler:
    """Which frames to keep: one per 1/fps seconds of media time, or every n-th frame."""

    def __init__(self, fps: float | None = 1.0, every_n: int | None = None) -> None:
        if every_n is not None and every_n < 1:
            raise InputError(f"--every-n must be a positive whole number, got {every_n}")
        if every_n is None and (fps is None or not fps > 0 or not math.isfinite(fps)):
            raise InputError(f"--fps must be a positive number of frames per second, got {fps}")
        self.fps, self.every_n = fps, every_n
        self._next = 0.0

    def take(self, index: int, time: float, frame_period: float) -> bool:
        if self.every_n is not None:
            return index % self.every_n == 0
        # Keep the first frame at or past each target time, with 0.45 frame of tolerance and
        # times rounded to 10 µs, so float32 (decord) and exact (PyAV) times pick the same frames.
        t = round(time + 0.45 * frame_period, 5)
        if t >= round(self._next, 5):
            step = 1.0 / self.fps
            self._next = (math.floor(t / step) + 1) * step
            return True
        return False


def scaled_size(width: int, height: int, long_side: int | None) -> tuple[int, int]:
    if not long_side or max(width, height) <= long_side:
        return width, height
    s = long_side / max(width, height)
    # even sizes keep every scaler happy
    return max(2, 2 * round(width * s / 2)), max(2, 2 * round(height * s / 2))


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 90:
        return np.ascontiguousarray(np.rot90(image, k=-1))
    if rotation == 180:
        return np.ascontiguousarray(image[::-1, ::-1])
    if rotation == 270:
        return np.ascontiguousarray(np.rot90(image, k=1))
    return image


def _usable(times: list[float]) -> bool:
    return bool(times) and all(math.isfinite(t) and t > -1e9 for t in times) and all(
        b > a for a, b in zip(times, times[1:]))


class FrameSource(Protocol):
    info: VideoInfo
    stopped_at: str | None  # set when decoding ended early (truncated file)

    def frames(self, sampler: Sampler) -> Iterator[Frame]: ...


class PyAVSource:
    """Sequential decode with frame threading; scaling in swscale."""

    def __init__(self, info: VideoInfo, long_side: int | None = None) -> None:
        self.info, self.long_side = info, long_side
        self.stopped_at: str | None = None

    def frames(self, sampler: Sampler) -> Iterator[Frame]:
        info = self.info
        container = _open(info.path)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rot = info.rotation
        coded_w, coded_h = (info.height, info.width) if rot in (90, 270) else (info.width, info.height)
        w, h = scaled_size(coded_w, coded_h, self.long_side)
        period = 1.0 / float(info.fps)
        first_pts = None
        last_t = -math.inf
        index = 0
        try:
            for frame in container.decode(stream):
                t = index * period
                if info.has_pts and frame.pts is not None:
                    first_pts = frame.pts if first_pts is None else first_pts
                    t = float((frame.pts - first_pts) * stream.time_base)
                    if t <= last_t:  # not increasing after all: frame numbers from here on
                        info.has_pts = False
                        t = index * period
                last_t = t
                if sampler.take(index, t, period):
                    img = frame.to_ndarray(format="rgb24", width=w, height=h)
                    yield Frame(index, t, _upright(img, rot))
                index += 1
        except Exception as exc:  # a truncated or damaged stream: keep what decoded
            self.stopped_at = f"decoding stopped at frame {index} ({type(exc).__name__})"
        finally:
            container.close()


_WORKER_READERS: dict = {}


def decode_run(path: str, indices: list[int], width: int, height: int) -> np.ndarray:
    """In a worker process (Ray's decode tasks): decode one run of frames (one seek, then
    forward), the reader kept for the process's next run of the same file."""
    key = (path, width, height)
    if key not in _WORKER_READERS:
        decord = import_decord()
        _WORKER_READERS.clear()
        _WORKER_READERS[key] = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    return _WORKER_READERS[key].get_batch(indices).asnumpy()


def default_workers() -> int:
    """Decode threads: none extra on small machines, up to 8 where there are many cores."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else min(8, cores // 2)


class DecordSource:
    """decord (the maintained decord2 fork): decoder-side scaling, batched sequential reads.

    With workers > 1 the wanted frames are split into runs of `chunk` frames decoded in threads
    (each run: one seek to the keyframe before it, then forward), at most 2 runs per thread in
    flight, and handed on in order."""

    def __init__(self, info: VideoInfo, long_side: int | None = None, chunk: int = 32, workers: int = 1) -> None:
        self.info, self.long_side, self.chunk, self.workers = info, long_side, chunk, max(1, workers)
        self.stopped_at: str | None = None

    def _parallel(self, runs: list[list[int]], w: int, h: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """Runs decoded in threads, each with its own reader: decord's calls go through ctypes,
        which lets go of the GIL, so threads decode in parallel without the start of a process
        per worker (spawned workers re-ran the CLI's imports, seconds each, for every video)."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        decord = import_decord()
        path = str(self.info.path)
        local = threading.local()
        readers = []  # every thread's reader, closed when the pool is done

        def decode(idx: list[int]) -> np.ndarray:
            vr = getattr(local, "reader", None)
            if vr is None:
                vr = local.reader = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
                readers.append(vr)
            return vr.get_batch(idx).asnumpy()

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        try:
            pending = []
            runs_iter = iter(runs)
            for idx in runs_iter:
                pending.append((idx, pool.submit(decode, idx)))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                idx, fut = pending.pop(0)
                nxt = next(runs_iter, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(decode, nxt)))
                yield idx, fut.result()
        finally:
            for _, fut in pending:  # a consumer that stops early (or an error): no more runs
                fut.cancel()
            pool.shutdown(wait=True)
            readers.clear()

    def open(self):
        """decord's reader at the decode size (decord2 applies the display matrix itself: ask for
        the upright size)."""
        decord = import_decord()
        w, h = scaled_size(self.info.width, self.info.height, self.long_side)
        try:
            return decord.VideoReader(str(self.info.path), ctx=decord.cpu(0), width=w, height=h, num_threads=0)
        except Exception as exc:
            raise InputError(f"{self.info.path}: decord cannot open it ({type(exc).__name__}); try --decoder pyav") from None

    @staticmethod
    def gives_rgb(vr) -> bool:
        """Whether the reader's frames have 3 channels. At some small sizes on some CPUs decord2
        returns 4 or 6 (seen at 96x54 and 144x80 on an AVX-512 machine, whichever decord2 3.x;
        its batch copy then fails): such files go through PyAV instead."""
        try:
            return len(vr) == 0 or vr[0].shape[-1] == 3
        except Exception:
            return True  # a damaged file: the decode reports where it stopped

    def plan(self, sampler: Sampler, vr=None) -> tuple[list[int], list[float]]:
        """The frames the sampler keeps, and every frame's time (from the stream's first frame)."""
        info = self.info
        vr = vr if vr is not None else self.open()
        n = len(vr)
        period = 1.0 / float(info.fps)
        stamps = vr.get_frame_timestamp(list(range(n)))[:, 0].tolist() if n else []
        if stamps and stamps[0] > 0 and _usable(stamps):
            first = stamps[0]  # media time counts from the stream's first frame
            stamps = [s - first for s in stamps]
        if not _usable(stamps):
            info.has_pts = False
            stamps = [i * period for i in range(n)]
        return [i for i in range(n) if sampler.take(i, stamps[i], period)], stamps

    def frames(self, sampler: Sampler) -> Iterator[Frame]:
        vr = self.open()
        if not self.gives_rgb(vr):
            del vr
            fallback = PyAVSource(self.info, self.long_side)
            yield from fallback.frames(sampler)
            self.stopped_at = fallback.stopped_at
            return
        w, h = scaled_size(self.info.width, self.info.height, self.long_side)
        wanted, stamps = self.plan(sampler, vr)
        runs = [wanted[c : c + self.chunk] for c in range(0, len(wanted), self.chunk)]
        if self.workers > 1 and len(runs) > 1:
            del vr
            batches = self._parallel(runs, w, h)
        else:
            batches = ((idx, None) for idx in runs)
        done = 0  # frames handed on
        try:
            for idx, batch in batches:
                if batch is None:
                    batch = vr.get_batch(idx).asnumpy()
                for i, img in zip(idx, batch):
                    yield Frame(i, stamps[i], img)
                    done += 1
        except Exception as exc:  # in a worker's run too, before this loop has named it
            near = wanted[min(done, len(wanted) - 1)]
            self.stopped_at = f"decoding stopped near frame {near} ({type(exc).__name__})"


def open_source(path: str | Path, decoder: str = "decord", long_side: int | None = None,
                info: VideoInfo | None = None, workers: int = 1) -> FrameSource:
    info = info or probe(path)
    if decoder == "decord" and not info.has_pts:
        # decord seeks by timestamp; without usable ones it returns wrong frames after a seek
        # (seen on an H.264 AVI: its frame 400 was really frame 150). PyAV decodes in order.
        decoder = "pyav"
    if decoder == "decord":
        return DecordSource(info, long_side, workers=workers)
    if decoder == "pyav":
        return PyAVSource(info, long_side)
    raise InputError(f"unknown decoder {decoder!r}: use decord or pyav")


def read_ahead(frames: Iterator[Frame], batch: int, depth: int = 4) -> Iterator[list[Frame]]:
    """Group frames into batches, decoded in a thread up to `depth` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            group: list[Frame] = []
            for f in frames:
                if stop.is_set():
                    return
                group.append(f)
                if len(group) == batch:
                    q.put(group)
                    group = []
            if group:
                q.put(group)
            q.put(done)
        except BaseException as exc:  # hand the error to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="vidsearch-decode")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def read_frame_at(path: str | Path, seconds: float, decoder: str = "pyav") -> Frame:
    """The frame shown at `seconds` (full resolution, upright), for --query-video: a seek to
    the keyframe before it, then decoding forward."""
    info = probe(path)
    if seconds < 0 or seconds > info.duration + 1.0 / float(info.fps):
        raise InputError(f"--at {seconds:.3f}s is outside {Path(path).name} (0 to {info.duration:.3f}s)")
    index = int(round(seconds * float(info.fps)))
    return Frame(index, index / float(info.fps), grab_frame(path, seconds, index, info))


def timed(container, info: VideoInfo) -> bool:
    """Whether frames of this open file are placed by their timestamps (else by count / fps)."""
    return bool(info.has_pts and container.streams.video[0].time_base)


def decode_from(container, info: VideoInfo, time: float) -> Iterator[tuple[float, object]]:
    """PyAV frames of an open file from about `time` on, each with its time in seconds counted from
    the stream's first frame, as when indexing: a seek to the keyframe a second before `time`
    where the file is `timed` (frames without a timestamp skipped), else every frame from the
    start at count / fps. No frame threading here: leaving the decode loop early with frames in
    flight can hang FFmpeg when the codec is freed (PyAV #909/#367; seen in `find --refine`)."""
    stream = container.streams.video[0]
    if not timed(container, info):
        period = 1.0 / float(info.fps)
        for i, frame in enumerate(container.decode(stream)):
            yield i * period, frame
        return
    container.seek(max(0, int((time - 1.0) / float(stream.time_base))) + (stream.start_time or 0),
                   stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.pts is not None:
            yield float((frame.pts - info.first_pts) * stream.time_base), frame


def grab_frame(path: str | Path, time: float, index: int, info: VideoInfo | None = None) -> np.ndarray:
    """The full-resolution, upright frame `index` (at `time`): seek to the keyframe before it
    and decode forward; files without usable timestamps are decoded from the start."""
    for _, image in grab_frames(path, [(time, index)], info):
        return image
    raise AssertionError("grab_frames yields every frame or raises")


# Frames wanted no further apart than this are reached by decoding on, not by a new seek: a seek
# lands on the keyframe a second or more before its frame (decode_from), so a hit one sampled
# second after the last costs one second of decoding either way, and within a GOP less.
GRAB_FORWARD = 2.0


def _first_at(frames: Iterator[tuple[float, object]], at: float, last_if_none: bool = False):
    """The first (position, frame) of `frames` at or after `at`; else the last one where
    `last_if_none`, else None."""
    last = None
    for item in frames:
        if item[0] >= at:
            return item
        last = item
    return last if last_if_none else None


def _decode_positions(container, info: VideoInfo, time: float, by_time: bool) -> Iterator[tuple[float, object]]:
    """decode_from's frames as (position, frame): their time where the file is timed, else
    their count from the start."""
    frames = decode_from(container, info, time)
    return frames if by_time else ((i, f) for i, (_, f) in enumerate(frames))


def grab_frames(path: str | Path, wanted: list[tuple[float, int]],
                info: VideoInfo | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Full-resolution, upright frames at (time, index) pairs, in time order, as (position in
    `wanted`, image), from one open file: frames close after the last one are decoded on to
    (the hits of a segment are a second or so apart, and each seek decoded from a keyframe
    again); files without usable timestamps are decoded from the start once, not once per
    frame. Raises InputError for the first frame that cannot be decoded."""
    info = info or probe(path)
    period = 1.0 / float(info.fps)
    order = sorted(range(len(wanted)), key=lambda k: (wanted[k][0], wanted[k][1]))
    container = _open(Path(path))
    frames = None  # the decode in progress: (position, frame) pairs
    try:
        by_time = timed(container, info)
        # where a wanted frame lies among the positions, and how far on a decode goes for it
        # (a decode of counted frames restarts from the start anyway)
        slack, reach = (period / 2, GRAB_FORWARD) if by_time else (0, math.inf)
        current = None  # the last frame handed out: (position, frame)
        for k in order:
            time, index = wanted[k]
            at = time if by_time else index
            if current is not None and (abs(current[0] - at) < slack if by_time else current[0] == at):
                found = current  # the same frame again
            elif current is not None and current[0] < at <= current[0] + reach:
                # decode on; past a timed stream's end the last frame is the one shown then
                found = _first_at(frames, at - slack, last_if_none=by_time) or (current if by_time else None)
            else:
                if frames is not None:
                    frames.close()  # its packets, before the container seeks again
                frames = _decode_positions(container, info, time, by_time)
                found = _first_at(frames, at - slack, last_if_none=by_time)
            if found is None:
                raise InputError(f"frame {index} of {path} cannot be decoded any more (was the file changed?)")
            current = found
            yield k, _upright(found[1].to_ndarray(format="rgb24"), info.rotation)
    finally:
        if frames is not None:
            frames.close()
        container.close()


class FrameGrabber:
    """Full-resolution frames of the videos of a result, one probe per video; a video that
    cannot be decoded (moved, changed, damaged) is kept in `missing` and not tried again."""

    def __init__(self) -> None:
        self.infos: dict[str, VideoInfo] = {}
        self.missing: set[str] = set()

    def grab(self, wanted: list[tuple[str, float, int]]) -> Iterator[tuple[int, np.ndarray]]:
        """(position in `wanted`, image) for (path, time, index) triples: each video's frames in
        one pass (grab_frames); the rest of a video's frames are left out from where it fails."""
        by_video: dict[str, list[int]] = {}
        for k, (path, _, _) in enumerate(wanted):
            by_video.setdefault(path, []).append(k)
        for path, ks in by_video.items():
            if path in self.missing:
                continue
            try:
                if path not in self.infos:
                    self.infos[path] = probe(path)
                for j, image in grab_frames(path, [wanted[k][1:] for k in ks], self.infos[path]):
                    yield ks[j], image
            except VidsearchError:
                self.missing.add(path)
