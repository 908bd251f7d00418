"""follow.py: verified segments followed to the samples beside them by the query's match."""

import numpy as np
import pytest

from vidsearch.follow import BRIDGE, FOLLOWED, follow_segments, frame_cut
from vidsearch.library import VideoRow
from vidsearch.refine import Refined
from vidsearch.search import Hit, Segment
from vidsearch.verify import Verdict

N = 10  # samples in the video, one a second, frame 25 k at k s
# background 0.4, sigma 0.02, best 0.8: verification's cut and a followed frame's are 0.6
VERDICT = Verdict(cut=0.6, background=0.4, sigma=0.02, best=0.8, checked=2, dropped=0)


def video(vid: int = 1) -> VideoRow:
    return VideoRow(vid, f"v{vid}.mp4", f"k{vid}", 1, 0.0, 640, 360, "25", float(N), 25 * N, "h264", 0, True, None,
                    N, 2 * N, "", "done", None)


class FakeLibrary:
    """Two regions per sampled frame; region 2k scores 0.1 k against any query, 2k+1 scores 0."""

    def load_shard(self, vid, fields):
        return {"frame": np.repeat(25 * np.arange(N), 2), "sample_frame": 25 * np.arange(N),
                "sample_time": np.arange(N, dtype=float)}

    def exact_scores(self, ids, q):
        rows = ids & 0xFFFFFFFF
        return np.where(rows % 2 == 0, 0.1 * (rows // 2), 0.0).astype(np.float32)


class FakeMatcher:
    """The object is on the samples in `shows`: there the match is 0.8 and its box lies 10 px
    right of the box it was looked for near; elsewhere 0.3 (a background place)."""

    def __init__(self, shows):
        self.shows = set(shows)
        self.calls = []

    def match_all(self, pairs, tick=None, boxes=True):
        assert boxes is False  # following ranks by the match near the box; no whole-frame pass
        out = []
        for seg, hit in pairs:
            self.calls.append((hit.frame // 25, list(hit.box)))
            x1, y1, x2, y2 = hit.box
            score = 0.8 if hit.frame // 25 in self.shows else 0.3
            out.append(Refined((x1 + 10, y1, x2 + 10, y2), score, 1.0))
        if tick:
            tick(len(pairs))
        return out


def segment(positions, match=0.8, vid=1) -> Segment:
    hits = [Hit(float(p), 25 * p, [100.0 * p, 0.0, 100.0 * p + 20, 20.0], 0.5) for p in positions]
    s = Segment(video(vid), float(positions[0]), float(positions[-1] + 1), hits)
    s.match = match
    return s


def follow(segments, shows, budget=100):
    matcher = FakeMatcher(shows)
    out, notes = follow_segments(FakeLibrary(), matcher, segments, VERDICT, np.ones((2, 4), np.float32), budget)
    return out, notes, matcher


def positions(seg):
    return [h.frame // 25 for h in seg.hits]


def test_a_verified_segment_takes_the_neighbouring_samples_the_match_finds_and_stops_after_the_bridge():
    (seg,), notes, m = follow([segment([3, 4])], shows=range(1, 8))
    assert positions(seg) == [1, 2, 3, 4, 5, 6, 7]
    # earlier: 2, 1 found, 0 missed, then the video's start; later: 5-7 found, 8 and 9 missed
    assert sorted(p for p, _ in m.calls) == [0, 1, 2, 5, 6, 7, 8, 9]
    assert BRIDGE == 1
    assert (seg.start, seg.end) == (1.0, 8.0)  # to the sample after the last hit, as group_segments
    added = [h for h in seg.hits if h.kind == FOLLOWED]
    assert len(added) == 5 and all(h.refined for h in added)
    # a followed hit's score is its frame's best region score (region 2k: 0.1 k)
    assert [round(h.score, 3) for h in added] == [0.1, 0.2, 0.5, 0.6, 0.7]
    assert "5 frame(s) next to verified moments added" in notes[0]


def test_each_sample_is_matched_near_the_box_of_the_hit_beside_it():
    _, _, m = follow([segment([3])], shows=range(3, 6))
    boxes = dict(m.calls)
    assert boxes[4] == [300.0, 0.0, 320.0, 20.0]  # the region's box at 3
    assert boxes[5] == [310.0, 0.0, 330.0, 20.0]  # the box the match found at 4
    assert boxes[2] == [300.0, 0.0, 320.0, 20.0]


def test_one_missed_sample_is_passed_over_and_its_gap_stays_in_the_segment():
    (seg,), _, _ = follow([segment([2])], shows={2, 4, 5})
    assert positions(seg) == [2, 4, 5]
    (seg,), _, m = follow([segment([2, 5])], shows={2, 4, 5})  # 3 lies in the segment's bridge
    assert positions(seg) == [2, 4, 5] and 3 in dict(m.calls) and 4 in dict(m.calls)


def test_segments_below_the_cut_or_without_a_match_are_not_followed():
    segs = [segment([2], match=0.55), segment([5], match=None, vid=2)]
    out, notes, m = follow(segs, shows=range(N))
    assert out == segs and [positions(s) for s in out] == [[2], [5]] and not m.calls and not notes


def test_segments_that_following_joins_merge_at_the_better_rank():
    a, b = segment([7, 8], match=0.7), segment([1, 2], match=0.9)
    out, _, _ = follow([b, a], shows=range(N))
    assert len(out) == 1 and out[0] is b
    assert positions(b) == list(range(N)) and b.match == 0.9 and (b.start, b.end) == (0.0, float(N))


def test_following_stops_at_the_budget_and_says_how_to_go_on():
    (seg,), notes, m = follow([segment([4])], shows=range(N), budget=3)
    assert len(m.calls) == 3 and len(seg.hits) == 4
    assert "--follow" in notes[0]


@pytest.mark.parametrize("budget", [0])
def test_a_budget_of_zero_is_off(budget):
    segs = [segment([4])]
    out, notes, m = follow(segs, shows=range(N), budget=budget)
    assert out == segs and not m.calls and not notes


def test_a_followed_frame_needs_the_cut_verification_set():
    assert frame_cut(VERDICT) == pytest.approx(0.6)
    near = Verdict(cut=0.46, background=0.4, sigma=0.02, best=0.5, checked=1, dropped=0)
    assert frame_cut(near) == pytest.approx(0.46)  # 3 sigmas above the background, above halfway (0.45)
