"""follow.py: verified segments followed to the samples beside them by the query's match."""

import numpy as np
import pytest

from vidsearch.follow import BRIDGE, FOLLOWED, follow_segments, frame_cut, hit_cut, keep_matched_hits
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


def weak_segment(scores: dict, match=0.8, vid=1) -> Segment:
    """A segment of hits at sample positions with region scores, and per hit its own match (or
    None where re-ranking did not match it): {position: (score, match)}."""
    seg = segment(sorted(scores), match=match, vid=vid)
    for h in seg.hits:
        h.score, h.match = scores[h.frame // 25]
    return seg


def keep(segments, shows=(), budget=100, verdict=VERDICT):
    matcher = FakeMatcher(shows)
    out, spent, notes = keep_matched_hits(FakeLibrary(), matcher, segments, verdict, 0.3, budget)
    assert spent == len(matcher.calls)
    return out, notes, matcher


def test_a_weak_hit_stays_only_where_its_own_match_stands_out_from_the_background():
    """Sure cut 0.3, background 0.4 and sigma 0.02 (a weak hit needs 0.46): the hit at 2 is sure;
    at 3 weak, matched by re-ranking at 0.5; 4 and 6 weak and matched here, near their own box,
    where the object is on 4 only (0.8; elsewhere 0.3); 5 matched by re-ranking at 0.45."""
    seg = weak_segment({2: (0.5, None), 3: (0.2, 0.5), 4: (0.2, None), 5: (0.2, 0.45), 6: (0.2, None)})
    (out,), notes, m = keep([seg], shows={4})
    assert hit_cut(VERDICT) == pytest.approx(0.46)
    assert positions(out) == [2, 3, 4] and out.match == 0.8 and not notes
    assert sorted(m.calls) == [(4, [400.0, 0.0, 420.0, 20.0]), (6, [600.0, 0.0, 620.0, 20.0])]
    assert out.hits[2].refined and out.hits[2].box == [410.0, 0.0, 430.0, 20.0]  # where its match found it
    assert (out.start, out.end) == (2.0, 5.0)  # to the sample after the last hit, as group_segments


def test_a_segment_whose_weak_hits_go_splits_into_its_runs_in_its_place():
    first, last = segment([0]), segment([9])
    seg = weak_segment({1: (0.5, 0.8), 2: (0.2, None), 3: (0.2, None), 4: (0.4, None)}, match=0.8)
    out, _, _ = keep([first, seg, last])
    assert out[0] is first and out[-1] is last  # untouched segments stay as they are
    assert [positions(s) for s in out] == [[0], [1], [4], [9]] and [s.match for s in out[1:3]] == [0.8, 0.8]
    # one missed sample stays bridged, as group_segments bridges it
    (bridged,), _, _ = keep([weak_segment({1: (0.5, None), 2: (0.2, None), 3: (0.5, None)})])
    assert positions(bridged) == [1, 3]


def test_weak_hits_past_the_budget_go_unmatched_and_the_user_is_told():
    seg = weak_segment({1: (0.5, None), 2: (0.25, None), 3: (0.2, None), 4: (0.22, None)})
    (out,), notes, m = keep([seg], shows=range(N), budget=2)
    assert [p for p, _ in m.calls] == [2, 4]  # the best region scores first
    assert positions(out) == [1, 2, 4] and "1 weak hit(s)" in notes[0] and "--follow" in notes[0]


def test_without_a_verdict_or_a_vouching_match_weak_hits_go_and_so_does_a_segment_of_them():
    weak = weak_segment({4: (0.2, 0.9), 5: (0.2, None)})
    out, _, m = keep([weak], shows=range(N), verdict=None)
    assert out == [] and not m.calls
    unmatched = weak_segment({4: (0.2, None), 5: (0.5, None)}, match=None)  # its video could not be decoded
    (out,), _, m = keep([unmatched], shows=range(N))
    assert positions(out) == [5] and not m.calls
    # kept as the best although nothing stood out (match below the cut): only its best look stays
    alone = weak_segment({4: (0.2, 0.5), 5: (0.2, 0.48), 6: (0.2, None)}, match=0.5)
    (out,), _, m = keep([alone], shows=range(N))
    assert positions(out) == [4] and not m.calls
    followed = weak_segment({4: (0.2, None)})
    followed.hits[0].kind = FOLLOWED
    out, _, m = keep([followed])
    assert out == [followed] and not m.calls


def test_samples_whose_weak_hits_went_are_matched_again_by_following():
    seg = weak_segment({2: (0.5, 0.8), 3: (0.2, None), 4: (0.2, 0.42)})
    kept, _, _ = keep([seg], shows={2})  # 3 fails near its own region's box
    assert positions(kept[0]) == [2]
    (out,), _, m = follow(kept, shows={2, 3})  # and is found near the box of the hit beside it
    assert positions(out) == [2, 3] and 3 in dict(m.calls) and 4 in dict(m.calls)
