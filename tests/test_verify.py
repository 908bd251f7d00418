"""verify.py: the match a re-ranked segment needs, from the best match and the background's."""

import pytest

from vidsearch.library import VideoRow
from vidsearch.search import Hit, Segment
from vidsearch.verify import Verdict, match_cut, verdict_note, verify_segments

from .helpers import commit_random_video

# median 0.40, MAD 0.02: sigma 0.02965, three of them 0.089
BACKGROUND = [0.38, 0.40, 0.40, 0.42, 0.44]


def video() -> VideoRow:
    return VideoRow(1, "a.mp4", "k", 1, 0.0, 640, 360, "25", 10.0, 250, "h264", 0, True, None, 10, 100, "", "done",
                    None)


def segment(t: float, match: float | None) -> Segment:
    s = Segment(video(), t, t + 1, [Hit(t, int(t * 25), [0, 0, 10, 10], 0.5)])
    s.match = match
    return s


def test_the_cut_is_halfway_from_the_background_to_the_best_match():
    cut, med, sigma = match_cut(0.8, BACKGROUND)
    assert med == pytest.approx(0.40) and sigma == pytest.approx(0.02 * 1.4826)
    assert cut == pytest.approx(0.60)


def test_the_cut_is_three_sigmas_above_the_background_when_the_best_is_near_it():
    cut, med, sigma = match_cut(0.5, BACKGROUND)
    assert cut == pytest.approx(0.40 + 3 * 0.02 * 1.4826)  # above halfway (0.45)


def test_segments_below_the_cut_are_dropped_and_unmatched_ones_kept():
    segs = [segment(0, 0.8), segment(2, 0.65), segment(4, 0.55), segment(6, None)]
    kept, v = verify_segments(segs, BACKGROUND)
    assert [s.start for s in kept] == [0, 2, 6]
    assert (v.checked, v.dropped, v.best) == (3, 1, 0.8) and v.cut == pytest.approx(0.6)
    note = verdict_note(v)
    assert "1 of 3 re-ranked segments dropped" in note and "--no-verify" in note


def test_when_nothing_stands_out_only_the_best_is_kept_and_the_user_told():
    segs = [segment(0, 0.45), segment(2, 0.47), segment(4, None)]
    kept, v = verify_segments(segs, BACKGROUND)
    assert [s.start for s in kept] == [2, 4]
    assert v.best < v.cut and "does not stand out" not in verdict_note(v) and "stands out" in verdict_note(v)


def test_nothing_is_dropped_without_a_match_or_a_background():
    segs = [segment(0, None), segment(2, None)]
    assert verify_segments(segs, BACKGROUND) == (segs, None)
    segs = [segment(0, 0.8)]
    assert verify_segments(segs, []) == (segs, None)


def test_a_verdict_without_drops_says_nothing():
    assert verdict_note(Verdict(0.6, 0.4, 0.03, 0.8, 3, 0)) is None
    assert Verdict(0.6, 0.4, 0.03, 0.8, 3, 1).to_dict() == {"cut": 0.6, "background": 0.4, "sigma": 0.03, "best": 0.8,
                                                             "checked": 3, "dropped": 1}


def test_background_regions_are_drawn_from_every_video_the_same_way_each_time(tmp_path):
    from vidsearch.library import Library
    from vidsearch.verify import background_pairs

    lib = Library.open(tmp_path / "lib", create=True)
    try:
        with lib.writer():
            a, _ = commit_random_video(lib, "a", n=3000, seed=1)
            b, _ = commit_random_video(lib, "b", n=1000, seed=2)
        videos = lib.videos()
        pairs = background_pairs(lib, videos, 40)
        again = background_pairs(lib, videos, 40)
        shards = {v.id: lib.load_shard(v.id, ("frame", "time")) for v in videos}
    finally:
        lib.close()
    assert len(pairs) == 40 and {s.video.id for s, _ in pairs} == {a, b}
    assert [(s.video.id, h.frame, h.time) for s, h in pairs] == [(s.video.id, h.frame, h.time) for s, h in again]
    for seg, hit in pairs:  # each is one of its video's regions, with its frame's time
        assert hit.frame in shards[seg.video.id]["frame"] and hit.time == pytest.approx(hit.frame / 24.0)
        assert hit.box == [0, 0, 10, 10] and seg.start == hit.time
