"""Query vector -> region hits -> best region per frame -> segments per video."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .dasr.views import KIND_FRAME, KIND_REGION
from .library import Library, VideoRow
from .library.faiss_index import BACKGROUND, is_exact
from .timecode import parse_rate, seconds_to_tc


@dataclass
class Hit:
    time: float
    frame: int
    box: list[float]
    score: float
    kind: str = "region"  # "region": a salient region; "frame": the whole-frame region matched
    refined: bool = False  # the box was looked for again with the query (refine.py)

    def to_dict(self) -> dict:
        return {"time": round(self.time, 6), "frame": self.frame, "box": [round(v, 1) for v in self.box],
                "score": round(self.score, 4), "kind": self.kind, "refined": self.refined}


@dataclass
class Segment:
    video: VideoRow
    start: float
    end: float
    hits: list[Hit] = field(default_factory=list)
    snap: str = "samples"  # what start and end lie on: sampled frames, or shot boundaries
    match: float | None = None  # the query-guided match on its best hits, where re-ranked (refine.py)

    @property
    def best(self) -> Hit:
        return max(self.hits, key=lambda h: h.score)

    @property
    def score(self) -> float:
        return self.best.score

    def to_dict(self) -> dict:
        """The JSON of a segment. For a proxy, the media it names is the camera original (path,
        rate, size, start timecode, boxes in its pixels, frame numbers at its rate), and
        `proxy` keeps the file that was indexed, for pictures."""
        from .proxies import Original, rescale_hit

        v = self.video
        original = Original.from_json(v.original)
        media = original or v
        rate = parse_rate(media.fps)

        def hit(h: Hit) -> dict:
            d = h.to_dict()
            if original:
                d = rescale_hit(d, media.width / v.width, media.height / v.height, float(rate))
            # the hit's own timecode: what an editor types to see the frame its box is on
            return {**d, "tc": seconds_to_tc(h.time, rate, start_tc=media.start_tc)}

        out = {
            "video": media.path,
            "start": round(self.start, 6),
            "end": round(self.end, 6),
            "start_tc": seconds_to_tc(self.start, rate, start_tc=media.start_tc),
            "end_tc": seconds_to_tc(self.end, rate, start_tc=media.start_tc),
            "fps": media.fps,
            "width": media.width,
            "height": media.height,
            "duration": round(media.duration, 6),
            "media_start_tc": media.start_tc,
            "score": round(self.score, 4),
            "match": None if self.match is None else round(self.match, 4),
            "snap": self.snap,
            "best": hit(self.best),
            "hits": [hit(h) for h in self.hits],
        }
        if original:
            out["proxy"] = {"path": v.path, "fps": v.fps, "width": v.width, "height": v.height}
        return out


def fuse(vectors: list[np.ndarray]) -> np.ndarray:
    """Several views of one object -> one query: the normalised mean of their vectors."""
    q = np.mean(np.stack(vectors), axis=0)
    return (q / max(np.linalg.norm(q), 1e-12)).astype(np.float32)


def as_views(q: np.ndarray) -> np.ndarray:
    """A query as (V, D) float32: one row per view (a single vector is one view)."""
    return np.ascontiguousarray(np.atleast_2d(q), dtype=np.float32)


def background_stats(index, q: np.ndarray, background: np.ndarray | None = None, sample: int = BACKGROUND,
                     seed: int = 0) -> tuple[float, float]:
    """Median and robust sigma (1.4826 MAD) of the query's scores (best view per region) against
    a random sample of regions: true matches are too few to move either much. An index of exact
    vectors gives the sample itself; for one of approximate codes, `background` holds the
    sample's exact vectors (Library.background)."""
    import faiss

    q = as_views(q)
    if background is None:
        if not is_exact(index):
            raise ValueError("an index of approximate codes needs the background's exact vectors")
        n = index.ntotal
        pos = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False)).astype(np.int64)
        background = faiss.downcast_index(index.index).reconstruct_batch(pos)
    return robust_stats((background @ q.T).max(1))


def robust_stats(values) -> tuple[float, float]:
    """Median and robust sigma (1.4826 MAD, at least 1e-3) of scores."""
    s = np.asarray(values)
    med = float(np.median(s))
    return med, max(float(np.median(np.abs(s - med))) * 1.4826, 1e-3)


RELATIVE = 0.6  # the automatic rule's share of the best match (auto_thresholds)
FIRST_K = 1024  # retrieve's first search; views with more matches than this go on as a range search


class Unclear(NamedTuple):
    """Where the best match does not stand out: it, the background, and the score to suggest."""
    best: float
    med: float
    sigma: float
    suggest: float


def auto_threshold(index, q: np.ndarray, background: np.ndarray | None = None) -> tuple[float, str | None]:
    """A frame counts when its best region beats the background by 3 robust sigmas and is within
    60 % of the best match in the library; 6 sigmas always count. Measured on generated videos:
    true frames score 0.45-0.67, background regions <= 0.13 (Lite0, 512 px, no whitening).

    The background is the library's own regions, so in a small library filled with one scene
    (the object in every frame) it is the object's own surroundings and can sit above every
    match. The best match is then still returned, with a note saying why it may be alone."""
    rule, _, note, _ = auto_thresholds(index, q, background)
    return rule, note


def auto_thresholds(index, q: np.ndarray, background: np.ndarray | None = None
                    ) -> tuple[float, float, str | None, Unclear | None]:
    """The automatic threshold (auto_threshold), the background's cut alone (3 robust sigmas,
    without the 60 %-of-best cut: for segments whose match with the query decides, verify.py),
    the note, and where the best match does not stand out, the score to suggest instead (the
    60 %-of-best cut alone). On generated 1080p clips of 40-100 px props the 60 %-of-best cut
    drops a third of the frames that show the object (bench/RESULTS.md): a small object's region
    score is mostly background, so it is the best match's score that varies, not the object's."""
    med, sigma = background_stats(index, q, background)
    best = float(index.search(as_views(q), 1)[0][:, 0].max())
    rule = max(med + 3 * sigma, min(med + 6 * sigma, RELATIVE * best))
    if rule <= best:
        return rule, med + 3 * sigma, None, None  # the rule is never below it
    unclear = Unclear(best, med, sigma, math.floor(100 * RELATIVE * best) / 100)
    return best, best, unclear_note(unclear), unclear


def unclear_note(u: Unclear, frames: int | None = None, videos: int = 1) -> str:
    """What the user is told where the best match does not stand out: why only it is shown, and
    the --min-score that shows the frames within the automatic rule's share of it (with their
    count, where known). In a library of one scene around the object (one clip about it) that
    is what they want; in a library without it, those frames are its least bad places."""
    which = "everything scoring" if frames is None else \
        f"the {frames} frame(s){'' if videos == 1 else f' in {videos} videos'} whose best region scores"
    what = f"{which} at least {RELATIVE:.0%} of the best"
    return (f"the best match ({u.best:.2f}) does not stand out from the library's other regions (median {u.med:.2f}, "
            f"sigma {u.sigma:.2f}): only the best frame is shown. Where the library is mostly footage of this "
            f"object (one scene), --min-score {u.suggest:.2f} --no-verify shows {what}; look before trusting them")


def retrieve(index, q: np.ndarray, min_score: float, max_regions: int = 200_000, max_k: int | None = None,
             exact=None, margin: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """All regions whose best view scores >= min_score (up to max_regions), best first."""
    q = as_views(q)
    parts = _retrieve_views(index, q, min_score, max_regions, max_k, exact, margin)
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([s for s, _ in parts])
    ids = np.concatenate([i for _, i in parts])
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(ids[order], return_index=True)  # each region at its best view
    keep = order[np.sort(first)][:max_regions]
    return scores[keep], ids[keep]


def _retrieve_views(index, q: np.ndarray, min_score: float, max_regions: int, max_k: int | None,
                    exact, margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view, all regions scoring >= min_score (up to max_regions), best first: one search for
    the best FIRST_K, which is all of them where its last score falls below the threshold (most
    queries); the views with more are searched again together as one range search down to the
    threshold, one scan of what the index reads (a crop has about ten views; searches with ever
    larger k scanned it anew each time, the largest with a heap of its k, most of the cost of a
    query with many matches in a 10M-region library).

    max_k: the largest k one search may ask for (GPU indexes allow 2048). exact: rescoring of
    candidates from stored vectors, for indexes with approximate codes; candidates are then taken
    down to min_score - margin first."""
    cut = min_score - margin if exact is not None else min_score
    k = min(index.ntotal, FIRST_K, max_k or FIRST_K)
    found = index.search(np.ascontiguousarray(q), k)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    more = []
    for v in range(len(q)):
        valid = found[1][v] >= 0
        scores, ids = found[0][v][valid], found[1][v][valid]
        if k < index.ntotal and k < max_regions and not (len(scores) and scores[-1] < cut):
            more.append(v)
        near = scores >= cut
        out.append((scores[near], ids[near]))
    if more:
        lims, dist, labels = index.range_search(np.ascontiguousarray(q[more]), cut)
        for row, v in enumerate(more):
            scores, ids = dist[lims[row] : lims[row + 1]], labels[lims[row] : lims[row + 1]]
            order = np.argsort(-scores, kind="stable")[:max_regions]
            out[v] = (scores[order], ids[order])
    for v, (scores, ids) in enumerate(out):
        if exact is not None and len(ids):
            scores = exact(ids, q[v])
            order = np.argsort(-scores, kind="stable")
            scores, ids = scores[order], ids[order]
        keep = scores >= min_score
        out[v] = (scores[keep], ids[keep])
    return out


SEARCH_FIELDS = ("frame", "time", "box", "kind", "sample_frame", "sample_time")
KIND_NAMES = {KIND_REGION: "region", KIND_FRAME: "frame"}


def frame_hits(shards: dict[int, dict[str, np.ndarray]], scores: np.ndarray, ids: np.ndarray) -> dict[int, dict[int, Hit]]:
    """Best region per (video, frame), with its box, from the region hits; `shards` holds the
    region tables of the videos hit."""
    out: dict[int, dict[int, Hit]] = {}
    vids = (ids >> 32).astype(np.int64)
    rows = (ids & 0xFFFFFFFF).astype(np.int64)
    for vid in np.unique(vids):
        sel = vids == vid
        shard = shards[int(vid)]
        per = out.setdefault(int(vid), {})
        for score, row in zip(scores[sel], rows[sel]):  # best first, so the first per frame wins
            frame = int(shard["frame"][row])
            if frame not in per:
                per[frame] = Hit(float(shard["time"][row]), frame, shard["box"][row].tolist(), float(score),
                                 KIND_NAMES[int(shard["kind"][row])])
    return out


def group_segments(video: VideoRow, hits: dict[int, Hit], sample_frame: np.ndarray,
                   sample_time: np.ndarray, bridge: int = 1) -> list[Segment]:
    """Consecutive sampled frames with hits form a segment; up to `bridge` missed samples in
    between are bridged. A segment ends where the sample after its last hit begins."""
    if not hits:
        return []
    position = {int(f): i for i, f in enumerate(sample_frame)}
    ordered = sorted(hits.values(), key=lambda h: position.get(h.frame, 0))
    segments: list[Segment] = []
    last_pos = None
    for h in ordered:
        p = position.get(h.frame, 0)
        if last_pos is None or p - last_pos > bridge + 1:
            segments.append(Segment(video, h.time, h.time))
        segments[-1].hits.append(h)
        last_pos = p
    for seg in segments:
        p = position.get(seg.hits[-1].frame, 0)
        seg.end = float(sample_time[p + 1]) if p + 1 < len(sample_time) else max(video.duration, seg.hits[-1].time)
    return segments


@dataclass
class SearchResult:
    segments: list[Segment]
    threshold: float
    regions_scored: int
    region_hits: int
    note: str | None = None  # why the automatic threshold was capped, for the user
    match_threshold: float | None = None  # the region score the first segments' hits needed, their match to decide


def _unclear_with_count(lib: Library, index, q: np.ndarray, u: Unclear, exact) -> str | None:
    """unclear_note with the number of frames --min-score `u.suggest` would give."""
    scores, ids = retrieve(index, q, u.suggest, exact=exact)
    if not len(ids):
        return None
    hits = frame_hits({int(v): lib.load_shard(int(v), SEARCH_FIELDS) for v in np.unique(ids >> 32)}, scores, ids)
    return unclear_note(u, sum(len(per) for per in hits.values()), len(hits))


def search(lib: Library, index, q: np.ndarray, top: int = 20, min_score: float | None = None,
           bridge: int = 1, match_depth: int = 0) -> SearchResult:
    """The segments whose hits score at least `min_score` (default: the automatic threshold),
    best first, the first `top`. With `match_depth` and the automatic threshold, the first
    `match_depth` segments are taken at the background's cut alone (auto_thresholds), for the
    query's match to decide on them (verify.py); the rest keep the full threshold."""
    if index is None or index.ntotal == 0:
        return SearchResult([], 0.0, 0, 0)
    exact = None if is_exact(index) else lib.exact_scores
    if exact is not None:
        import faiss

        preset = lib.preset()
        faiss.extract_index_ivf(index).nprobe = preset.nprobe if preset else 32
    if min_score is None:
        threshold, loose, note, unclear = auto_thresholds(index, q, lib.background())
        if unclear is not None:
            note = _unclear_with_count(lib, index, q, unclear, exact) or note
    else:
        threshold, loose, note = min_score, min_score, None
    loose = loose if match_depth else threshold
    scores, ids = retrieve(index, q, loose, exact=exact)
    shards = {int(v): lib.load_shard(int(v), SEARCH_FIELDS) for v in np.unique(ids >> 32)}
    segments: list[Segment] = []
    for vid, hits in frame_hits(shards, scores, ids).items():
        video = lib.video(vid)
        if video is None:
            continue
        shard = shards[vid]
        segments.extend(group_segments(video, hits, shard["sample_frame"], shard["sample_time"], bridge))
    segments.sort(key=lambda s: -s.score)
    if loose < threshold:  # past the first match_depth, only hits above the full threshold, regrouped
        rest = []
        for seg in segments[match_depth:]:
            kept = {h.frame: h for h in seg.hits if h.score >= threshold}
            shard = shards[seg.video.id]
            rest.extend(group_segments(seg.video, kept, shard["sample_frame"], shard["sample_time"], bridge))
        segments = segments[:match_depth] + sorted(rest, key=lambda s: -s.score)
    return SearchResult(segments[:top] if top else segments, threshold, index.ntotal, len(ids), note,
                        loose if loose < threshold else None)
