"""Verified moments followed to the sampled frames beside them, by the query's match.

A small object's region vector is mostly background, so many sampled frames that show it never
reach the region score's cut, even right next to a frame where the match found it and
verification kept its segment (generated 1080p props, 40-100 px: of the 27 frames showing an
object, a query's hits held 10-27, and half of the misses lie in clips where another frame was
found; bench/RESULTS.md). An object seldom jumps between samples a second apart, so each verified
segment is followed outward one sample at a time, and into the samples it bridges: the query's
template is matched near the box of the nearest hit (refine.refine_near, the match re-ranking
computes), and a frame whose match passes the verification cut joins the segment as a
`followed` hit, with the box the match found. A direction stops after BRIDGE + 1 frames in a
row fail (the gap group_segments bridges), at another segment's hit (the two merge), at the
video's ends, or when `budget` frames have been matched.

The cut is verification's (verify.match_cut): the match a segment needed to be kept. A followed
hit's score is its frame's best region score, as every hit's is; it lies below the region cut,
which is why the frame was not a hit, and its kind says how it got there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .library import Library
from .search import Hit, Segment
from .verify import SIGMAS, Verdict

SHARE = 0.5  # frame_cut: as verification's (verify.SHARE)
BRIDGE = 1  # missed samples a followed direction passes over (group_segments' bridge)
FOLLOWED = "followed"  # Hit.kind of a frame added by following
# Frames matched per query unless told otherwise (find --follow): a match near a box costs about
# 0.3 s on a 2-core CPU (1080p) and milliseconds on a GPU.
FOLLOW_FRAMES = {"cpu": 40, "cuda": 200}


@dataclass
class _Side:
    """One direction of a followed segment: the next sample to try and the hit it is tried near."""
    step: int  # -1 earlier, +1 later
    next: int  # sample position
    anchor: Hit
    misses: int = 0


@dataclass
class _Run:
    seg: Segment
    at: dict[int, Hit]  # sample position -> hit
    sides: list[_Side] = field(default_factory=list)
    gaps: list[tuple[int, Hit]] = field(default_factory=list)  # bridged samples and the hit beside each


def frame_cut(v: Verdict) -> float:
    """The match a followed frame needs: SHARE of the way from the background's median to the
    best match, and at least 3 robust sigmas above that median."""
    return max(v.background + SIGMAS * v.sigma, v.background + SHARE * (v.best - v.background))


def follow_segments(lib: Library, matcher, segments: list[Segment], verdict: Verdict, q: np.ndarray, budget: int,
                    progress=None) -> tuple[list[Segment], list[str]]:
    """The segments, those verification kept by their match followed to neighbouring samples (at
    most `budget` frames matched in all, best segment first each round), and segments that meet
    merged. `q`: the query's vectors as the index holds them (V, D), for followed hits' region
    scores. Returns the segments and notes for the user."""
    runs_of = [s for s in segments if s.match is not None and s.match >= verdict.cut]
    if not runs_of or budget <= 0:
        return segments, []
    cut = frame_cut(verdict)
    shards = {v.id: lib.load_shard(v.id, ("frame", "sample_frame", "sample_time"))
              for v in {s.video.id: s.video for s in runs_of}.values()}
    positions = {vid: _positions(shard) for vid, shard in shards.items()}  # frame -> sample position
    owner: dict[tuple[int, int], Segment] = {}  # (video, position) -> the segment whose hit is there
    for s in segments:
        if s.video.id in shards:
            for h in s.hits:
                owner[s.video.id, positions[s.video.id].get(h.frame, -1)] = s
    runs = [_start(s, positions[s.video.id]) for s in runs_of]
    wanted = min(budget, sum(len(r.gaps) + _reach(r, shards[r.seg.video.id]) for r in runs))
    tick = progress("following verified moments", wanted) if progress and wanted else None
    spent, added, merges = 0, [], []
    while spent < budget:
        tries = []  # (run, side or None, position, anchor)
        for r in runs:
            tries += [(r, None, p, a) for p, a in r.gaps]
            tries += [(r, s, s.next, s.anchor) for s in r.sides if _open(s, r, shards, owner, merges)]
        tries = tries[:budget - spent]
        if not tries:
            break
        taken = {(id(r), p) for r, side, p, _ in tries if side is None}
        for r in runs:
            r.gaps = [(p, a) for p, a in r.gaps if (id(r), p) not in taken]
        spent += len(tries)
        pairs = [(r.seg, _probe(shards[r.seg.video.id], p, a)) for r, _, p, a in tries]
        for (r, side, p, _), (_, probe), found in zip(tries, pairs, matcher.match_all(pairs, tick, boxes=False)):
            hit = None
            other = owner.get((r.seg.video.id, p))
            if other is not None and other is not r.seg:  # reached this round from both sides
                merges.append((r.seg, other))
                if side is not None:
                    side.misses = BRIDGE + 1
                continue
            if found is not None and found.score >= cut:
                hit = Hit(probe.time, probe.frame, list(found.box), 0.0, FOLLOWED, refined=True)
                r.at[p] = hit
                owner[r.seg.video.id, p] = r.seg
                added.append((r.seg.video.id, hit))
            if side is not None:
                side.misses = 0 if hit else side.misses + 1
                side.anchor = hit or side.anchor
                side.next = p + side.step
    if tick and spent < wanted:
        tick(wanted - spent)
    _score(lib, added, shards, q)
    for r in runs:
        _settle(r, shards[r.seg.video.id])
    out = _merge(segments, merges, positions)
    left = any(r.gaps or any(_open(s, r, shards, owner, []) for s in r.sides) for r in runs)
    notes = [f"{len(added)} frame(s) next to verified moments added by their match with the query" +
             (f"; following stopped after {budget} frames matched, --follow N for more" if left and spent >= budget
              else "")] if added or (left and spent >= budget) else []
    return out, notes


def _positions(shard: dict[str, np.ndarray]) -> dict[int, int]:
    return {int(f): i for i, f in enumerate(shard["sample_frame"])}


def _start(seg: Segment, position: dict[int, int]) -> _Run:
    at = {position[h.frame]: h for h in seg.hits if h.frame in position}
    run = _Run(seg, at)
    if not at:
        return run
    first, last = min(at), max(at)
    run.gaps = [(p, at[_nearest(at, p)]) for p in range(first + 1, last) if p not in at]
    run.sides = [_Side(-1, first - 1, at[first]), _Side(1, last + 1, at[last])]
    return run


def _nearest(at: dict[int, Hit], p: int) -> int:
    return min(at, key=lambda k: (abs(k - p), k))


def _reach(run: _Run, shard: dict[str, np.ndarray]) -> int:
    """How many samples its sides could try at most (to the video's ends)."""
    n = len(shard["sample_frame"])
    return sum(s.next + 1 if s.step < 0 else n - s.next for s in run.sides)


def _open(side: _Side, run: _Run, shards: dict, owner: dict, merges: list) -> bool:
    """Whether the side goes on to side.next; where it meets another segment's hit, the two are
    noted to merge and it stops."""
    if side.misses > BRIDGE or not 0 <= side.next < len(shards[run.seg.video.id]["sample_frame"]):
        return False
    other = owner.get((run.seg.video.id, side.next))
    if other is not None:
        if other is not run.seg:
            merges.append((run.seg, other))
        side.misses = BRIDGE + 1
        return False
    return True


def _probe(shard: dict[str, np.ndarray], p: int, anchor: Hit) -> Hit:
    """The sample at position p, to be matched near the anchor's box."""
    return Hit(float(shard["sample_time"][p]), int(shard["sample_frame"][p]), list(anchor.box), 0.0)


def _score(lib: Library, added: list[tuple[int, Hit]], shards: dict, q: np.ndarray) -> None:
    """Each followed hit's score: the best score of its frame's regions (any view of the query)."""
    q = np.atleast_2d(q)
    for vid, hit in added:
        rows = np.nonzero(shards[vid]["frame"] == hit.frame)[0]
        if len(rows):
            ids = (np.int64(vid) << np.int64(32)) | rows.astype(np.int64)
            hit.score = float(max(lib.exact_scores(ids, v).max() for v in q))


def _settle(run: _Run, shard: dict[str, np.ndarray]) -> None:
    """The segment's hits, start and end from its followed positions (as group_segments sets them)."""
    seg = run.seg
    if not run.at:
        return
    seg.hits = [run.at[p] for p in sorted(run.at)]
    last = max(run.at)
    times = shard["sample_time"]
    seg.start = seg.hits[0].time
    seg.end = float(times[last + 1]) if last + 1 < len(times) else max(seg.video.duration, seg.hits[-1].time)


def _merge(segments: list[Segment], merges: list[tuple[Segment, Segment]], positions: dict) -> list[Segment]:
    """Segments that following joined are one: hits together, the better match, at the place of
    the earlier of them in the order given."""
    into: dict[int, Segment] = {}

    def root(s: Segment) -> Segment:
        while id(s) in into:
            s = into[id(s)]
        return s

    rank = {id(s): i for i, s in enumerate(segments)}
    for a, b in merges:
        a, b = root(a), root(b)
        if a is b:
            continue
        keep, gone = (a, b) if rank[id(a)] < rank[id(b)] else (b, a)
        position = positions[keep.video.id]
        keep.hits = sorted(keep.hits + gone.hits, key=lambda h: position.get(h.frame, 0))
        keep.start, keep.end = min(keep.start, gone.start), max(keep.end, gone.end)
        matches = [m for m in (keep.match, gone.match) if m is not None]
        keep.match = max(matches) if matches else None
        into[id(gone)] = keep
    return [s for s in segments if id(s) not in into]
