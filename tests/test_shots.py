"""Shot boundaries: candidates from sampled frames, exact cuts from the frames in between."""

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from vidsearch import shots
from vidsearch.sample import render_frames, write_video
from vidsearch.search import Hit, Segment

pytestmark = pytest.mark.skipif(not shots.available(), reason="PySceneDetect is not installed (vidsearch[shots])")

FPS = Fraction(24)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """Hard cuts between real photos every 2.3 s: first frames of new shots 56 and 111 (at 24 fps),
    between sampled frames (one per second)."""
    frames, _ = render_frames(size=(320, 180), fps=FPS, seconds=6.0, appear=(9.0, 9.0), shot_seconds=2.3)
    path = write_video(tmp_path_factory.mktemp("shots") / "cuts.mp4", frames, FPS)
    samples = list(range(0, len(frames), 24))
    return path, frames, samples


def test_sampled_frames_give_the_intervals_with_a_cut(cut_video):
    _, frames, samples = cut_video
    cuts = shots.SampleCuts()
    cuts.feed([frames[i] for i in samples[:3]])  # fed in batches, as while indexing
    cuts.feed([frames[i] for i in samples[3:]])
    # samples 0..5 are at 0..5 s; cuts at 2.33 s and 4.63 s: the shots start anew at samples 3 and 5.
    # A second of panning may look like a cut too: such candidates are checked frame by frame later.
    found = cuts.positions().tolist()
    assert {3, 5} <= set(found) and 1 not in found and 2 not in found


def test_exact_cut_is_the_first_frame_of_the_new_shot(cut_video):
    path = cut_video[0]
    assert shots.exact_cut(path, 2.0, 3.0) == pytest.approx(56 / 24, abs=1e-3)
    assert shots.exact_cut(path, 4.0, 5.0) == pytest.approx(111 / 24, abs=1e-3)
    assert shots.exact_cut(path, 0.0, 1.0) is None  # no cut in there
    assert shots.exact_cut(path, 3.0, 4.0) is None  # a second of panning, but no cut between frames


def test_segments_snap_to_their_shots_and_merge(cut_video):
    path, frames, samples = cut_video
    video = SimpleNamespace(path=str(path), duration=len(frames) / 24, id=1)
    shard = {"sample_frame": np.array(samples), "sample_time": np.array(samples) / 24.0,
             "shot_cut": np.array([3, 4, 5])}  # 4: a candidate with no cut

    def seg(times, score):
        s = Segment(video, times[0], times[-1] + 1)
        s.hits = [Hit(t, int(t * 24), [0, 0, 1, 1], score, "region") for t in times]
        return s

    # hits at 3 s and at 4 s (both in the shot 2.33-4.63 s), at 0 s (first shot), at 5 s (last)
    out, notes = shots.snap_to_shots([seg([3.0], 0.9), seg([4.0], 0.5), seg([0.0], 0.7), seg([5.0], 0.6)],
                                     lambda v: shard)
    # the shot 2.33-4.63 s holds two runs of hits: one segment, and a note on how to get both
    assert notes == ["segment 1 (%s, 2 s) is one shot whose hits fall in 2 separate moments; --snap samples "
                     "lists each moment as a segment" % path.name]
    assert [(round(s.start * 24), round(s.end * 24), len(s.hits)) for s in out] == [(56, 111, 2), (0, 56, 1), (111, 144, 1)]
    assert all(s.snap == "shots" for s in out) and out[0].score == 0.9
    # re-ranked (find matches and verifies segments of samples before they widen to shots): the
    # order given stays, a merged segment takes the place of its first part and the better match
    parts = [seg([5.0], 0.6), seg([4.0], 0.5), seg([3.0], 0.9), seg([0.0], 0.7)]
    for part, match in zip(parts, [0.8, 0.75, 0.3, None]):
        part.match = match
    out, _ = shots.snap_to_shots(parts, lambda v: shard)
    assert [(round(s.start * 24), round(s.end * 24), len(s.hits), s.match) for s in out] == \
        [(111, 144, 1, 0.8), (56, 111, 2, 0.75), (0, 56, 1, None)]
    # a video indexed without shot detection keeps its segments, and the user is told why
    plain = seg([3.0], 0.9)
    out, notes = shots.snap_to_shots([plain], lambda v: {**shard, "shot_cut": None})
    assert (out[0].start, out[0].end, out[0].snap) == (3.0, 4.0, "samples") and "vidsearch[shots]" in notes[0]
