"""Shot boundaries, so that a segment can be a whole shot (PySceneDetect, optional extra).

While indexing, PySceneDetect runs on small copies of the sampled frames and marks each
sample that starts a new shot: a cut lies somewhere in the interval before it. Only
those candidates are stored (in the shard, as `shot_cut`: sample positions). When `find` snaps a
segment to its shot, the one or two candidate intervals it needs are decoded frame by frame
(small, a second or two of video each) and the detector finds the exact first frame of the
shot; a candidate with no cut at frame level (motion between samples, not a cut) is passed over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

THUMB = (160, 90)  # what the detector sees: colour changes, not detail
THRESHOLD = 27.0  # PySceneDetect's default for ContentDetector (frame by frame)


def available() -> bool:
    try:
        import cv2  # noqa: F401
        import scenedetect  # noqa: F401
    except ImportError:
        return False
    return True


def thumbnail(image: np.ndarray) -> np.ndarray:
    """The small BGR copy of a frame the detector sees."""
    import cv2

    # every n-th pixel first (to about twice the thumbnail), then an area average: a full-size
    # area resize of a 1080p frame costs ~40 ms, more than this whole step should
    step = max(1, min(image.shape[1] // (2 * THUMB[0]), image.shape[0] // (2 * THUMB[1])))
    return cv2.resize(np.ascontiguousarray(image[::step, ::step, ::-1]), THUMB, interpolation=cv2.INTER_AREA)


def _detector():
    from scenedetect.detectors import ContentDetector

    return ContentDetector(threshold=THRESHOLD, min_scene_len=1)


class SampleCuts:
    """Fed the sampled frames in order while indexing; `positions()` are the samples that start
    a new shot (a cut lies between the sample before and this one). Samples are a second or so
    apart, so camera motion alone changes much of the picture between them: colour histograms
    (PySceneDetect's HistogramDetector) tell cuts from motion there better than pixel-wise
    content differences do (measured on generated 1080p pans: one false candidate against every
    interval flagged)."""

    def __init__(self) -> None:
        from scenedetect.detectors import HistogramDetector

        self.detector = HistogramDetector(min_scene_len=1)
        self.n = 0
        self.cuts: list[int] = []

    def feed(self, images) -> None:
        self.feed_thumbnails(thumbnail(image) for image in images)

    def feed_thumbnails(self, thumbs) -> None:
        """Fed thumbnails made elsewhere (on Ray workers), in sample order."""
        for thumb in thumbs:
            self.cuts += self.detector.process_frame(self.n, thumb)
            self.n += 1

    def positions(self) -> np.ndarray:
        if self.n:
            self.cuts += self.detector.post_process(self.n - 1) or []
        return np.array(sorted({int(c) for c in self.cuts if 0 < c < self.n}), dtype=np.int64)


def exact_cut(path: str | Path, t0: float, t1: float, info=None) -> float | None:
    """The time of the first frame of a new shot in (t0, t1], from every frame in between
    (None: no cut there). Times as in the index: from the stream's first frame."""
    from .video import _open, decode_from, probe

    info = info or probe(path)
    container = _open(Path(path))
    try:
        detector = _detector()
        times: list[float] = []
        period = 1.0 / float(info.fps)
        for t, frame in decode_from(container, info, t0):
            if t < t0 - period / 2:
                continue
            if t > t1 + period / 2:
                break
            img = frame.reformat(width=THUMB[0], height=THUMB[1], format="bgr24").to_ndarray()
            for c in detector.process_frame(len(times), img):
                if 0 < c <= len(times):
                    return times[c] if c < len(times) else t
            times.append(t)
    finally:
        container.close()
    return None


def shot_bounds(path: str, sample_time: np.ndarray, cut_positions: np.ndarray, first: int, last: int,
                duration: float, info=None, cache: dict | None = None) -> tuple[float, float]:
    """Start and end of the shot(s) spanning sampled frames `first`..`last` (positions): the
    nearest real cut before `first` (or the video's start) and after `last` (or its end)."""
    cache = {} if cache is None else cache

    def cut_at(k: int) -> float | None:
        if k not in cache:
            cache[k] = exact_cut(path, float(sample_time[k - 1]), float(sample_time[k]), info)
        return cache[k]

    start, end = 0.0, duration
    for k in sorted((int(k) for k in cut_positions if k <= first), reverse=True):
        c = cut_at(k)
        if c is not None:
            start = c
            break
    for k in sorted(int(k) for k in cut_positions if k > last):
        c = cut_at(k)
        if c is not None:
            end = c
            break
    return start, end


def snap_to_shots(segments: list, shards_of) -> tuple[list, list[str]]:
    """Segments widened to whole shots; segments that end up in one shot are merged (hits
    together, the better match, at the place of the first of them in the order given).
    `shards_of(video)` gives that video's shard arrays with `sample_frame`, `sample_time` and
    `shot_cut` (None where it was indexed without shot detection: its segments stay as they
    are). Returns the segments and notes for the user."""
    from .video import probe
    from .errors import VidsearchError

    out, notes, plain = [], [], set()
    infos: dict[str, object] = {}
    caches: dict[str, dict] = {}
    for seg in segments:
        video = seg.video
        shard = shards_of(video)
        if shard is None or shard.get("shot_cut") is None:
            plain.add(video.path)
            out.append(seg)
            continue
        position = {int(f): i for i, f in enumerate(shard["sample_frame"])}
        first = min(position.get(h.frame, 0) for h in seg.hits)
        last = max(position.get(h.frame, 0) for h in seg.hits)
        try:
            info = infos[video.path] = infos.get(video.path) or probe(video.path)
            seg.start, seg.end = shot_bounds(video.path, shard["sample_time"], shard["shot_cut"], first, last,
                                             float(video.duration), info, caches.setdefault(video.path, {}))
        except VidsearchError:
            notes.append(f"{video.path} cannot be decoded any more: its segments are not snapped to shots")
        seg.snap = "shots"
        out.append(seg)
    merged: list = []
    rank = {id(seg): i for i, seg in enumerate(out)}
    parts = {id(seg): 1 for seg in out}  # runs of sampled hits in each segment
    for seg in sorted(out, key=lambda s: (s.video.path, s.start)):
        prev = merged[-1] if merged else None
        if prev is not None and prev.video.path == seg.video.path and getattr(seg, "snap", "") == "shots" \
                and getattr(prev, "snap", "") == "shots" and seg.start < prev.end:
            prev.hits = sorted(prev.hits + seg.hits, key=lambda h: h.time)
            prev.end = max(prev.end, seg.end)
            matches = [m for m in (getattr(prev, "match", None), getattr(seg, "match", None)) if m is not None]
            prev.match = max(matches) if matches else None
            rank[id(prev)] = min(rank[id(prev)], rank[id(seg)])
            parts[id(prev)] += parts[id(seg)]
            continue
        merged.append(seg)
    merged.sort(key=lambda s: rank[id(s)])  # the order given (by score, or re-ranked by the match)
    # a long take where the object comes and goes is one segment: say so, and how to get the moments
    apart = [(i, s) for i, s in enumerate(merged) if parts[id(s)] > 1]
    if apart:
        i, s = apart[0]
        more = f" (and {len(apart) - 1} more segment(s) like it)" if len(apart) > 1 else ""
        notes.append(f"segment {i + 1} ({Path(s.video.path).name}, {s.end - s.start:.0f} s) is one shot whose hits "
                     f"fall in {parts[id(s)]} separate moments{more}; --snap samples lists each moment as a segment")
    if plain:
        notes.append(f"{len(plain)} video(s) were indexed without shot detection, so their segments end at "
                     "sampled frames: with 'vidsearch[shots]' installed, vidsearch remove FILE and index it again "
                     "to snap to shots")
    return merged, notes
