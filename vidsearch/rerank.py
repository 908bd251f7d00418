"""find's second stage: hit frames decoded again and matched with the query's template
(refine.py), to re-rank the first segments, verify them against the library's background
(verify.py) and place the boxes shown."""

from __future__ import annotations

from .library import Library
from .queries import Query
from .verify import BACKGROUND_MATCHES, Verdict, background_pairs, verdict_note, verify_segments


class Matcher:
    """The query's templates (refine.py), and hit frames decoded and matched with them."""

    def __init__(self, engine, queries: list[Query]) -> None:
        from .refine import make_template, refine_layer
        from .video import FrameGrabber

        self.engine = engine
        self.layer = refine_layer(engine)
        self.templates = []
        for q in queries:
            h, w = q.image.shape[:2]
            whole = q.box[0] <= 0 and q.box[1] <= 0 and q.box[2] >= w and q.box[3] >= h
            self.templates.append(make_template(engine, self.layer, q.image, None if whole else q.box))
        self.grabber = FrameGrabber()
        self.failed = self.grabber.missing  # the videos that could not be decoded

    def match_all(self, pairs: list, tick=None, boxes: bool = True) -> list:
        """refine.Refined per (segment, hit), None where its video cannot be decoded; without
        `boxes` only the score counts (the box is not looked for elsewhere in the frame)."""
        from .refine import refine_box

        return self._on_frames(pairs, [None] * len(pairs), tick, lambda k, frame: refine_box(
            self.engine, self.layer, frame, self.templates, pairs[k][1].box, anywhere=boxes))

    def move_all(self, found: list, tick=None) -> list:
        """The whole-frame pass (refine.move_anywhere) for (segment, hit, refine_near's Refined)
        triples: the Refined each ends with (the near one where its video cannot be decoded)."""
        from .refine import move_anywhere

        return self._on_frames(found, [near for _, _, near in found], tick, lambda k, frame: move_anywhere(
            self.engine, self.layer, frame, self.templates, found[k][2]))

    def match_beside(self, pairs: list, anchors: dict[int, list], tick=None, near: dict | None = None) -> list:
        """refine_box per (segment, hit), as match_all; then a frame whose object size differs
        from a neighbour's in the segment (the nearest hits matched here before and after it, and
        `anchors`: id(segment) -> [(time, box)] of hits placed already, trusted) that matched
        better is matched again near that neighbour's box at about its size (refine.BESIDE_ZOOMS),
        and takes that match where it is the better one. The size near a hit region comes from a
        zoom the region vouches for; where the region lies beside the object, or on a larger
        thing, it is the wrong size, and the box found at it is wrong too. Two such frames side by
        side agree with each other, so one differing neighbour is enough; and a frame fixed can
        fix the next one: up to BESIDE_ROUNDS rounds, each only for boxes not looked near before.
        `near`: id(hit) -> refine_near's match near its region where re-ranking has it already."""
        from .refine import BESIDE_ROUNDS, BESIDE_ZOOMS, move_anywhere, refine_near

        near = near or {}

        def first(k: int, frame):
            hit = pairs[k][1]
            own = near.get(id(hit)) or refine_near(self.engine, self.layer, frame, self.templates, hit.box)
            return move_anywhere(self.engine, self.layer, frame, self.templates, own)

        out = self._on_frames(pairs, [None] * len(pairs), tick, first)
        tried: set = set()  # (pair, neighbour's box) looked near already
        for _ in range(BESIDE_ROUNDS):
            redo = self._beside_boxes(pairs, anchors, out, tried)
            if not redo:
                break
            order = sorted(redo)

            def again(i: int, frame, order=order, redo=redo):
                k = order[i]
                other = max((refine_near(self.engine, self.layer, frame, self.templates, box, BESIDE_ZOOMS)
                             for box in redo[k]), key=lambda m: m.score)
                if other.score <= out[k].score:
                    return out[k]
                return move_anywhere(self.engine, self.layer, frame, self.templates, other)

            for k, found in zip(order, self._on_frames([pairs[k] for k in order], [out[k] for k in order], None, again)):
                out[k] = found
        return out

    @staticmethod
    def _beside_boxes(pairs: list, anchors: dict[int, list], out: list, tried: set) -> dict[int, list]:
        """pair -> the boxes of its nearest neighbours (before, after) that matched better than it
        at another size, leaving out those in `tried` (which gains the rest)."""
        from .refine import same_size

        redo: dict[int, list] = {}
        for k, (seg, hit) in enumerate(pairs):
            if out[k] is None:
                continue
            others = [(h.time, out[j].box, out[j].score) for j, (s, h) in enumerate(pairs)
                      if s is seg and j != k and out[j] is not None and out[j].template >= 0]
            others += [(t, box, float("inf")) for t, box in anchors.get(id(seg), [])]
            beside = [n for n in _beside(others, hit.time) if n is not None]
            boxes = [box for _, box, score in beside
                     if score > out[k].score and not same_size(out[k].side, box) and (k, tuple(box)) not in tried]
            if boxes:
                redo[k] = boxes
                tried.update((k, tuple(box)) for box in boxes)
        return redo

    def _on_frames(self, items: list, out: list, tick, work) -> list:
        """out[k] = work(k, frame) for each item's hit frame (items start with (segment, hit));
        out[k] stays where its video cannot be decoded. The hit frames of each video are grabbed
        in one pass (video.FrameGrabber): a segment's hits are a second or so apart, and a seek
        per hit decoded from a keyframe again each time."""
        done = 0
        for k, frame in self.grabber.grab([(item[0].video.path, item[1].time, item[1].frame) for item in items]):
            out[k] = work(k, frame)
            done += 1
            if tick:
                tick(1)
        if tick and done < len(items):  # the frames of videos that could not be decoded
            tick(len(items) - done)
        return out

    def notes(self, what: str, known: set[str] = frozenset()) -> list[str]:
        """A note per video that could not be decoded, leaving out those `known` already."""
        return [f"{what} in {p}: it cannot be decoded any more" for p in sorted(self.failed - known)]


def _beside(items: list, time: float) -> tuple:
    """The nearest items (time, ...) before (or at) and after `time`: (before, after), None where
    there is none."""
    before = [a for a in items if a[0] <= time]
    after = [a for a in items if a[0] > time]
    return (max(before, key=lambda a: a[0]) if before else None, min(after, key=lambda a: a[0]) if after else None)


def rerank_segments(engine, queries: list[Query], segments: list, depth: int, refine: bool = True,
                    progress=None, matcher: Matcher | None = None,
                    deferred: list | None = None) -> tuple[list, list[str]]:
    """Re-ranking: the best RERANK_LOOKS hits (by region score, so on different frames) of each
    of the first `depth` segments are matched with the query (refine.py); a segment's match is
    the best of them, and those segments are ordered by it, above the others, which keep their
    order (as do segments whose video cannot be decoded). With `refine`, each matched box
    replaces its hit's. With a `deferred` list, the boxes' whole-frame pass is left for
    place_deferred: (segment, hit, match) go there, and the hit keeps the match's box near its
    region until then (verification drops most re-ranked segments of a large library, and the
    pass costs as much as the match). Returns the segments and notes for the user."""
    from .refine import RERANK_LOOKS

    checked = segments[:depth]
    matcher = matcher or Matcher(engine, queries)
    pairs = [(seg, hit) for seg in checked for hit in sorted(seg.hits, key=lambda h: -h.score)[:RERANK_LOOKS]]
    tick = progress("re-ranking", len(pairs)) if progress else None
    for (seg, hit), found in zip(pairs, matcher.match_all(pairs, tick, boxes=refine and deferred is None)):
        if found is None:
            continue
        seg.match = found.score if seg.match is None else max(seg.match, found.score)
        if refine:
            hit.box = list(found.box)
            hit.refined = True
            if deferred is not None:
                deferred.append((seg, hit, found))
    ranked = sorted((s for s in checked if s.match is not None), key=lambda s: -s.match)
    return ranked + [s for s in checked if s.match is None] + segments[depth:], matcher.notes("not re-ranked")


def verify_matches(lib: Library, videos: list, matcher: Matcher, segments: list, gpu: bool,
                   progress=None) -> tuple[list, Verdict | None, list[str]]:
    """verify.py on re-ranked segments: the template matched at random regions of the library
    (BACKGROUND_MATCHES), then the segments whose match does not stand out dropped. Returns the
    segments, the verdict and notes for the user."""
    if not any(s.match is not None for s in segments):
        return segments, None, []
    pairs = background_pairs(lib, videos, BACKGROUND_MATCHES["cuda" if gpu else "cpu"])
    tick = progress("matching the background", len(pairs)) if progress else None
    background = [f.score for f in matcher.match_all(pairs, tick, boxes=False) if f is not None]
    if not background:
        return segments, None, ["re-ranked segments were not verified: no background region of the library could "
                                "be decoded"]
    kept, verdict = verify_segments(segments, background)
    note = verdict_note(verdict)
    return kept, verdict, [note] if note else []


def place_deferred(matcher: Matcher, deferred: list, segments: list, progress=None) -> None:
    """The whole-frame pass of the re-ranked hits rerank_segments deferred, for those still
    among the hits of `segments` (verification kept their segment): each box may move to a better
    match elsewhere in its frame, as refine_box would have moved it."""
    kept = {id(h) for s in segments for h in s.hits}  # by hit: segments may have merged into shots since
    todo = [(seg, hit, near) for seg, hit, near in deferred if id(hit) in kept]
    if not todo:
        return
    tick = progress("placing boxes", len(todo)) if progress else None
    for (seg, hit, _), found in zip(todo, matcher.move_all(todo, tick)):
        hit.box = list(found.box)


def refine_hits(engine, queries: list[Query], segments, limit: int = 100, progress=None,
                matcher: Matcher | None = None, deferred: list | None = None) -> list[str]:
    """Query-guided boxes (refine.py) on hit frames: each segment's best hit first, then the
    others in segment order, up to `limit` frames. Where a box's size differs from that of a
    neighbour in the segment that matched better, it is looked for again near the neighbour's
    box (Matcher.match_beside): a hit region can lie beside the object, or on a larger thing,
    and the box found near it is then the wrong size and in the wrong place (bench/RESULTS.md).
    Followed hits (follow.py), found by a match near their neighbour's box, keep theirs and
    count as neighbours; re-ranked hits (`deferred`, rerank_segments') are placed here from the
    match they have near their region, and those past `limit` get their whole-frame pass alone
    (place_deferred). Ranking and scores stay; boxes change and say so. Returns notes for the user
    (frames that could not be decoded)."""
    deferred = deferred or []
    waiting = {id(h): near for _, h, near in deferred}  # re-ranked hits and their match near the region
    order = [(s, s.best) for s in segments] + [(s, h) for s in segments for h in s.hits if h is not s.best]
    notes = [f"boxes refined on the first {limit} of {len(order)} hit frames (each segment's best first); "
             f"--refine-frames N for more"] if len(order) > limit else []
    # followed hits are refined (their box is their match's) and do not wait
    order = [(s, h) for s, h in order[:limit] if not h.refined or id(h) in waiting]
    todo = {id(h) for _, h in order}
    place_deferred(matcher, [d for d in deferred if id(d[1]) not in todo], segments, progress)
    if not order:
        return notes
    matcher = matcher or Matcher(engine, queries)
    known = set(matcher.failed)  # named already (by re-ranking)
    tick = progress("refining boxes", len(order)) if progress else None
    anchors = {id(s): [(h.time, list(h.box)) for h in s.hits if h.refined and id(h) not in todo] for s in segments}
    near = {k: found for k, found in waiting.items() if k in todo}
    for (seg, hit), found in zip(order, matcher.match_beside(order, anchors, tick, near)):
        if found is not None:
            hit.box = list(found.box)
            hit.refined = True
    return notes + matcher.notes("boxes were not refined", known)
