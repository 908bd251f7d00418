"""Which re-ranked segments show the query's object: their match against the library's background.

Re-ranking (rerank.rerank_segments) matches the query's template with the two best hits of each
of the first segments (refine.py, RERANK_LOOKS), and a segment's match is the better. That
match separates right frames from wrong ones far better than the region score that made them
hits: on generated 1080p clips of 40-100 px props, frames showing the object match at 0.43-0.83
(median about 0.7), the wrong frames that the region score ranks among the first 30 at
0.40-0.60, and the template at random regions of the library at about 0.33-0.50
(bench/RESULTS.md). So the match, not the region score, decides which
re-ranked segments are shown:

- the background is the template's match at a few regions drawn at random from the library
  (the same search, around a region, at every zoom, that a hit gets);
- a segment is kept when its match is nearer the best match than the background's median, and
  beats that median by 3 robust sigmas. The first is the cut `auto_threshold` makes on region
  scores (a share of the way to the best), measured from the background rather than from zero;
  the second keeps a library without the object from showing its least bad places.

Where nothing passes, the best segment is kept and a note says it does not stand out, as the
automatic threshold does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .library import Library, VideoRow
from .library.faiss_index import sample_region_ids
from .search import Hit, Segment, robust_stats

# Background regions matched per query: a median from 8 is steady to a few hundredths; a match
# costs about half a second on a 2-core CPU and milliseconds on a GPU.
BACKGROUND_MATCHES = {"cpu": 8, "cuda": 32}
SHARE = 0.5  # of the way from the background's median to the best match
SIGMAS = 3.0


@dataclass
class Verdict:
    cut: float  # the match a segment needs
    background: float  # median match of the template at random regions
    sigma: float  # their robust spread (1.4826 MAD)
    best: float  # the best match among the segments checked
    checked: int  # segments with a match
    dropped: int  # of those, below the cut

    def to_dict(self) -> dict:
        return {"cut": round(self.cut, 4), "background": round(self.background, 4), "sigma": round(self.sigma, 4),
                "best": round(self.best, 4), "checked": self.checked, "dropped": self.dropped}


def background_pairs(lib: Library, videos: list[VideoRow], n: int, seed: int = 0) -> list[tuple[Segment, Hit]]:
    """(segment, hit) pairs for `n` regions drawn uniformly from the videos' regions (the same
    draw for the same library), in the form the matcher takes."""
    ids = sample_region_ids({v.id: v.regions for v in videos if v.regions}, n, seed=seed)
    by_id = {v.id: v for v in videos}
    pairs = []
    for vid in np.unique(ids >> 32):
        shard = lib.load_shard(int(vid), ("frame", "time", "box"))
        for row in ids[(ids >> 32) == vid] & 0xFFFFFFFF:
            t = float(shard["time"][row])
            pairs.append((Segment(by_id[int(vid)], t, t),
                          Hit(t, int(shard["frame"][row]), shard["box"][row].tolist(), 0.0)))
    return pairs


def match_cut(best: float, background: list[float]) -> tuple[float, float, float]:
    """The match a segment needs, from the best match and the background's matches: (cut,
    median, sigma)."""
    med, sigma = robust_stats(background)
    return max(med + SIGMAS * sigma, med + SHARE * (best - med)), med, sigma


def verify_segments(segments: list[Segment], background: list[float]) -> tuple[list[Segment], Verdict | None]:
    """The segments less those whose match (where they have one) is below the cut; segments
    without a match are kept as they are. Where none passes, the best matched one is kept."""
    matched = [s.match for s in segments if s.match is not None]
    if not matched or not background:
        return segments, None
    best = max(matched)
    cut, med, sigma = match_cut(best, background)
    kept = [s for s in segments if s.match is None or s.match >= cut]
    if not any(s.match is not None for s in kept):
        top = max((s for s in segments if s.match is not None), key=lambda s: s.match)
        kept = [s for s in segments if s is top or s.match is None]
    return kept, Verdict(cut, med, sigma, best, len(matched), len(segments) - len(kept))


def verdict_note(v: Verdict) -> str | None:
    """What the user is told about the segments dropped."""
    if v.best < v.cut:
        return (f"no segment's match with the query ({v.best:.2f} at best) stands out from the library's "
                f"background (median {v.background:.2f}, sigma {v.sigma:.2f}): only the best is shown, and it may "
                f"not be the object; --no-verify shows every segment")
    if v.dropped:
        return (f"{v.dropped} of {v.checked} re-ranked segments dropped: their match with the query (below "
                f"{v.cut:.2f}) lies nearer the library's background ({v.background:.2f}) than the best match "
                f"({v.best:.2f}); --no-verify keeps them")
    return None
