"""vidsearch play: the player found on PATH is started at the segment's time."""

import json
import os
import stat

import pytest

from vidsearch.errors import InputError
from vidsearch.play import play_command

from .helpers import run


@pytest.fixture()
def result(tmp_path):
    video = tmp_path / "clip one.mp4"
    video.write_bytes(b"not really a video; the fake player does not care")
    seg = {"video": str(video), "start": 12.5, "end": 19.0, "fps": "24", "score": 0.8, "start_tc": "00:00:12:12",
           "best": {"time": 15.25, "frame": 366, "box": [1, 2, 3, 4], "score": 0.8}, "hits": []}
    path = tmp_path / "hits.json"
    path.write_text(json.dumps({"segments": [seg, {**seg, "start": 40.0, "end": 41.0}]}))
    return path, video


def fake_player(bin_dir, name):
    """A stand-in for mpv / ffplay that records its arguments."""
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{bin_dir}/{name}.args"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir / f"{name}.args"


def test_mpv_is_started_at_the_segment(result, tmp_path, monkeypatch):
    path, video = result
    args = fake_player(tmp_path / "bin", "mpv")
    fake_player(tmp_path / "bin", "ffplay")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    run("play", path, "2")
    assert args.read_text().splitlines() == ["--start=40.000", "--force-window=yes", str(video)]
    run("play", path, "1", "--from", "best")
    assert args.read_text().splitlines()[0] == "--start=15.250"
    ff = tmp_path / "bin" / "ffplay.args"
    run("play", path, "--player", "ffplay")
    assert ff.read_text().splitlines()[-3:] == ["-ss", "12.500", str(video)]


def test_without_a_player_the_message_says_what_to_install(result, tmp_path, monkeypatch):
    path, _ = result
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = run("play", path, "1", ok=False)
    assert out.exit_code != 0 and "install mpv" in out.output and "ffplay" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_bad_segment_number_or_missing_video(result):
    path, video = result
    with pytest.raises(InputError, match="segments 1 to 2"):
        play_command(path, 3)
    video.unlink()
    with pytest.raises(InputError, match="no longer exists"):
        play_command(path, 1)
