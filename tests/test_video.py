"""Decoding: both backends give the same frames at the same times, on generated videos."""

from fractions import Fraction

import numpy as np
import pytest

from vidsearch.errors import InputError
from vidsearch.sample import render_frames, write_video
from vidsearch.video import Sampler, open_source, probe, read_ahead, read_frame_at


@pytest.fixture(scope="module")
def frames():
    imgs, _ = render_frames(size=(192, 108), fps=Fraction(24), seconds=4.0, appear=(1.0, 3.0))
    return imgs


def decode_both(path, sampler_args=None, long_side=None):
    out = {}
    for dec in ("decord", "pyav"):
        src = open_source(path, dec, long_side)
        got = list(src.frames(Sampler(**(sampler_args or {"fps": 2.0}))))
        out[dec] = got
    return out


def assert_agree(out, max_mean_diff=2.0):
    a, b = out["decord"], out["pyav"]
    assert [f.index for f in a] == [f.index for f in b]
    assert np.allclose([f.time for f in a], [f.time for f in b], atol=1e-3)
    for fa, fb in zip(a, b):
        assert fa.image.shape == fb.image.shape
        assert np.abs(fa.image.astype(int) - fb.image.astype(int)).mean() < max_mean_diff


def test_constant_rate_mp4(tmp_path, frames):
    path = write_video(tmp_path / "cfr.mp4", frames, Fraction(24))
    info = probe(path)
    assert info.fps == Fraction(24) and info.has_pts and (info.width, info.height) == (192, 108)
    out = decode_both(path)
    assert [f.index for f in out["pyav"]] == [0, 12, 24, 36, 48, 60, 72, 84]
    assert [f.time for f in out["pyav"]] == pytest.approx([i / 2 for i in range(8)])
    assert_agree(out)


def test_ntsc_rate_is_an_exact_fraction(tmp_path, frames):
    path = write_video(tmp_path / "ntsc.mp4", frames[:30], Fraction(24000, 1001))
    assert probe(path).fps == Fraction(24000, 1001)


def test_variable_frame_rate(tmp_path, frames):
    # frame durations alternate 30 ms and 55 ms
    pts = np.cumsum([0] + [30 if i % 2 else 55 for i in range(len(frames) - 1)]).tolist()
    path = write_video(tmp_path / "vfr.mkv", frames, Fraction(24), pts=pts, time_base=Fraction(1, 1000))
    out = decode_both(path, {"fps": 4.0})
    times = [f.time for f in out["pyav"]]
    assert times == pytest.approx([pts[f.index] / 1000 for f in out["pyav"]], abs=1e-6)
    # one frame per quarter second of media time: each within a frame of its own target
    targets = [round(t / 0.25) for t in times]
    assert targets == list(range(len(times)))
    assert all(abs(t - k * 0.25) < 0.056 for t, k in zip(times, targets))
    assert_agree(out)


def test_avi_without_usable_timestamps_falls_back_to_frame_over_fps(tmp_path, frames):
    # H.264 with B-frames in AVI: the container only has decode-order stamps
    path = write_video(tmp_path / "nopts.avi", frames, Fraction(24))
    info = probe(path)
    assert not info.has_pts
    out = decode_both(path, {"every_n": 10})
    assert [f.time for f in out["pyav"]] == pytest.approx([i * 10 / 24 for i in range(len(out["pyav"]))])
    assert_agree(out, max_mean_diff=0.01)  # decord is routed to PyAV: exactly the same frames


def test_every_n_and_decoder_scaling(tmp_path, frames):
    path = write_video(tmp_path / "cfr.mp4", frames, Fraction(24))
    out = decode_both(path, {"every_n": 25}, long_side=96)
    assert [f.index for f in out["decord"]] == [0, 25, 50, 75]
    assert out["decord"][0].image.shape == (54, 96, 3)
    assert_agree(out, max_mean_diff=4.0)


def test_rotated_phone_video_is_upright(tmp_path, frames):
    path = write_video(tmp_path / "rot.mp4", frames[:24], Fraction(24), rotation=90)
    info = probe(path)
    assert info.rotation in (90, 270) and (info.width, info.height) == (108, 192)
    out = decode_both(path, {"every_n": 12})
    assert out["pyav"][0].image.shape == (192, 108, 3)
    assert_agree(out)
    upright = np.rot90(frames[0], k=-1 if info.rotation == 90 else 1)
    assert np.abs(out["pyav"][0].image.astype(int) - upright.astype(int)).mean() < 6


def test_read_ahead_batches_and_propagates_errors():
    from vidsearch.video import Frame

    def gen(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("boom")
            yield Frame(i, i / 10, np.zeros((2, 2, 3), np.uint8))

    sizes = [len(b) for b in read_ahead(gen(10), batch=4, depth=1)]
    assert sizes == [4, 4, 2]
    with pytest.raises(RuntimeError, match="boom"):
        list(read_ahead(gen(10, fail_at=6), batch=4))


def test_frame_at_time_and_bad_files(tmp_path, frames):
    path = write_video(tmp_path / "cfr.mp4", frames, Fraction(24))
    f = read_frame_at(path, 2.0)
    assert f.index == 48 and f.image.shape == (108, 192, 3)
    with pytest.raises(InputError, match="outside"):
        read_frame_at(path, 60.0)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video")
    for bad, msg in [(tmp_path / "missing.mp4", "no such file"), (tmp_path / "empty.mp4", "empty"),
                     (tmp_path / "notes.txt", "not a video"), (tmp_path, "directory")]:
        with pytest.raises(InputError, match=msg):
            probe(bad)


def test_decord_import_leaves_blas_alone():
    """decord2 preloads libnvblas, which breaks torch's CPU matrix products; our import must not."""
    import subprocess
    import sys

    code = ("from vidsearch.video import import_decord; import_decord(); import torch; "
            "a = torch.ones(64, 64); print(float((a @ a).sum())); "
            "print(any('nvblas' in l for l in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split() == ["262144.0", "False"]


def test_parallel_decoding_matches_sequential(tmp_path, frames):
    path = write_video(tmp_path / "cfr.mp4", frames, Fraction(24))
    one = list(open_source(path, "decord", 96).frames(Sampler(every_n=3)))
    src = open_source(path, "decord", 96, workers=2)
    src.chunk = 5  # many small runs over two threads
    two = list(src.frames(Sampler(every_n=3)))
    assert [f.index for f in two] == [f.index for f in one] == list(range(0, 96, 3))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, two))


def test_a_decord_reader_that_gives_more_than_three_channels_sends_the_file_to_pyav(tmp_path, frames, monkeypatch):
    """decord2 gives 4- or 6-channel frames at some small sizes on some CPUs (AVX-512): the file is
    decoded by PyAV instead of failing at its first batch."""
    from vidsearch.video import DecordSource

    class Reader:
        def __init__(self, channels: int, n: int = 3):
            self.channels, self.n = channels, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return np.zeros((54, 96, self.channels), np.uint8)

    assert DecordSource.gives_rgb(Reader(3)) and DecordSource.gives_rgb(Reader(4, n=0))
    assert not DecordSource.gives_rgb(Reader(4)) and not DecordSource.gives_rgb(Reader(6))
    path = write_video(tmp_path / "cfr.mp4", frames, Fraction(24))
    monkeypatch.setattr(DecordSource, "open", lambda self: Reader(4))
    got = list(open_source(path, "decord", 96).frames(Sampler(every_n=25)))
    want = list(open_source(path, "pyav", 96).frames(Sampler(every_n=25)))
    assert [f.index for f in got] == [f.index for f in want] == [0, 25, 50, 75]
    assert all(f.image.shape == (54, 96, 3) and np.array_equal(f.image, g.image) for f, g in zip(got, want))


@pytest.mark.parametrize("name", ["cfr.mp4", "nopts.avi"])
def test_frames_grabbed_in_one_pass_are_those_grabbed_one_by_one(tmp_path, frames, name, monkeypatch):
    """find's refinement grabs every hit frame of a video in one pass (video.grab_frames): hits a
    second or so apart are decoded on to instead of each seeking back to a keyframe; a file
    without timestamps is decoded from its start once."""
    from vidsearch import video
    from vidsearch.video import grab_frame, grab_frames

    path = write_video(tmp_path / name, frames, Fraction(24))
    info = probe(path)
    picks = [70, 3, 27, 27, 50, 51, 95, 5]  # out of order, a repeat, neighbours, the last frame
    wanted = [(i / 24, i) for i in picks] + ([(4.3, 103)] if info.has_pts else [])  # past the end: the last
    seeks = []
    real = video.decode_from
    monkeypatch.setattr(video, "decode_from", lambda *a: seeks.append(a[2]) or real(*a))
    got = dict(grab_frames(path, wanted, info))
    assert len(seeks) == 1  # every frame here is within GRAB_FORWARD of the one before
    monkeypatch.setattr(video, "GRAB_FORWARD", 0.5)
    seeks.clear()
    apart = dict(grab_frames(path, wanted, info))
    assert len(seeks) == (5 if info.has_pts else 1)  # 0.125 s, 1.125, 2.08, 2.9, 3.96: seeks
    monkeypatch.undo()
    assert sorted(got) == list(range(len(wanted)))
    for k, (t, i) in enumerate(wanted):
        one = grab_frame(path, t, i, info)
        assert np.array_equal(got[k], one) and np.array_equal(apart[k], one), (t, i)
    if not info.has_pts:  # counted frames: one past the last is an error, as one by one
        with pytest.raises(InputError, match="frame 300 .* cannot be decoded"):
            list(grab_frames(path, [(0.5, 12), (12.5, 300)], info))
    with pytest.raises(InputError, match="no such file"):
        list(grab_frames(tmp_path / "gone.mp4", [(0.5, 12)], info))


def test_a_frame_grabber_takes_each_video_in_one_pass_and_skips_one_that_is_gone(tmp_path, frames):
    from vidsearch.video import FrameGrabber, grab_frame

    path, gone = str(write_video(tmp_path / "cfr.mp4", frames, Fraction(24))), str(tmp_path / "gone.mp4")
    grabber = FrameGrabber()
    got = dict(grabber.grab([(path, 2.0, 48), (gone, 1.0, 24), (path, 0.5, 12)]))
    assert sorted(got) == [0, 2] and grabber.missing == {gone}
    assert np.array_equal(got[0], grab_frame(path, 2.0, 48)) and np.array_equal(got[2], grab_frame(path, 0.5, 12))
    assert list(grabber.grab([(gone, 0.0, 0)])) == [] and list(grabber.infos) == [path]
