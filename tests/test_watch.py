"""Watch folders: settled files are indexed, growing ones wait, deleted ones can be removed."""

import threading
import time
from pathlib import Path

from vidsearch import api
from vidsearch.sample import make_sample
from vidsearch.watch import settled, snapshot

from .helpers import run

PRESET = str(Path(__file__).parent / "presets" / "e2e.toml")


def test_settled_needs_the_same_size_and_time_twice(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.MOV", tmp_path / "c.mp4"
    before = {a: (10, 1.0), b: (10, 1.0), c: (0, 1.0)}
    after = {a: (10, 1.0), b: (20, 2.0), c: (0, 1.0), tmp_path / "d.mp4": (5, 3.0)}
    assert settled(before, after) == [a]  # b grew, c is empty, d is new
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.mp4").write_bytes(b"1")
    (tmp_path / ".partial.mp4").write_bytes(b"1")
    (tmp_path / "notes.txt").write_bytes(b"1")
    assert list(snapshot([tmp_path])) == [(tmp_path / "sub" / "x.mp4").resolve()]


def test_watch_indexes_what_has_settled_and_removes_what_was_deleted(tmp_path):
    folder, lib = tmp_path / "card", tmp_path / "lib"
    folder.mkdir()
    video = folder / "clip.mp4"
    make_sample(video, seconds=3.0, appear=(1.0, 2.0), size=(320, 180))
    growing = folder / "copying.mp4"
    growing.write_bytes(b"\0" * 1000)
    stop = threading.Event()

    def keep_writing():  # a copy in progress: it grows all through the watch
        while not stop.is_set():
            with growing.open("ab") as f:
                f.write(b"\0" * 1000)
            time.sleep(0.05)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run("watch", folder, "-l", lib, "--preset", PRESET, "--device", "cpu", "--once", "--settle", "0.5")
    finally:
        stop.set()
        writer.join()
    assert "waiting for copying.mp4" in result.output
    assert [Path(v["path"]).name for v in api.status(str(lib))["videos"]] == ["clip.mp4"]
    video.unlink()
    result = run("watch", folder, "-l", lib, "--once", "--settle", "0", "--remove-deleted")
    assert "removed" in result.output and api.status(str(lib))["videos"] == []


def test_watch_needs_folders(tmp_path):
    result = run("watch", tmp_path / "nope", "--once", ok=False)
    assert result.exit_code != 0 and "not a folder" in result.output
