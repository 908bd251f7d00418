"""Bad input, crashes and concurrency: clear one-line errors, nothing lost or torn."""

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image
from typer.testing import CliRunner

from vidsearch import api, queries
from vidsearch.cli import app
from vidsearch.errors import InputError
from vidsearch.library import Library
from vidsearch.sample import make_sample, object_crop, render_frames, write_video

TINY = str(Path(__file__).parent / "presets" / "tiny.toml")
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(lib: Path):
    return sorted((str(p.relative_to(lib)), p.read_bytes()) for p in lib.rglob("*")
                  if p.is_file() and not p.name.startswith("catalog.sqlite") and p.name != "write.lock")


def catalog_rows(lib: Path):
    db = sqlite3.connect(lib / "catalog.sqlite")
    try:
        return db.execute("SELECT id, path, status, regions FROM videos ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    paths = []
    for i, appear in enumerate([(0.0, 1.5), (1.0, 2.5), (9.0, 9.0)]):
        p = root / f"clip{i}.mp4"
        make_sample(p, seconds=3.0, appear=appear, size=(320, 180))
        paths.append(p)
    crop = root / "cup.png"
    Image.fromarray(object_crop("coffee")).save(crop)
    return {"root": root, "videos": paths, "crop": crop}


@pytest.fixture
def library(clips, tmp_path):
    lib = tmp_path / "lib"
    api.index_videos([str(clips["videos"][0])], str(lib), TINY, device="cpu")
    return lib


# ----------------------------------------------------------------------------- videos


def test_truncated_stream_indexes_what_decodes(tmp_path):
    frames, _ = render_frames(size=(320, 180), seconds=8.0, appear=(1, 2))
    path = write_video(tmp_path / "cut.mkv", frames)  # MKV records the full duration up front
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reports = api.index_videos([str(path)], str(tmp_path / "lib"), TINY, device="cpu")
    assert reports[0].status == "indexed" and 2 <= reports[0].frames < 8
    v = api.status(str(tmp_path / "lib"))["videos"][0]
    assert "truncated" in v["note"] or "ended at" in v["note"]


def test_truncated_mp4_without_index_is_a_clear_error(tmp_path):
    frames, _ = render_frames(size=(160, 90), seconds=2.0, appear=(1, 2))
    path = write_video(tmp_path / "cut.mp4", frames)
    path.write_bytes(path.read_bytes()[:2000])
    result = cli("index", path, "-l", tmp_path / "lib", "--preset", TINY)
    assert result.exit_code == 1 and "cut.mp4" in result.output and "Traceback" not in result.output


def test_images_and_audio_are_not_videos(tmp_path):
    import av

    Image.fromarray(object_crop("coffee")).save(tmp_path / "still.jpg")
    with av.open(str(tmp_path / "audio.m4a"), "w") as out:
        s = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    for name, msg in (("still.jpg", "still image"), ("audio.m4a", "no video stream")):
        result = cli("index", tmp_path / name, "-l", tmp_path / "lib", "--preset", TINY)
        assert result.exit_code == 1 and msg in result.output


def test_unsupported_codec_is_a_clear_error(tmp_path):
    frames, _ = render_frames(size=(160, 90), seconds=1.0, appear=(5, 6))
    path = write_video(tmp_path / "odd.mp4", frames)
    path.write_bytes(path.read_bytes().replace(b"avc1", b"zzzz"))  # a codec tag FFmpeg does not know
    result = cli("index", path, "-l", tmp_path / "lib", "--preset", TINY)
    assert result.exit_code == 1 and "not supported" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "lib").exists()


def test_8k_frames_are_scaled_in_the_decoder(tmp_path):
    frame = np.asarray(Image.fromarray(object_crop("coffee")).resize((7680, 4320)))
    path = write_video(tmp_path / "8k.mp4", [frame, frame], Fraction(2))
    reports = api.index_videos([str(path)], str(tmp_path / "lib"), TINY, device="cpu")
    assert reports[0].status == "indexed" and reports[0].regions > 0
    lib = Library.open(tmp_path / "lib")
    boxes = lib.load_shard(1, ("box",))["box"]
    assert boxes[:, 2].max() > 1000  # boxes are in the video's own 8K pixels


def test_video_shorter_than_the_sampling_interval(tmp_path):
    frames, _ = render_frames(size=(160, 90), seconds=0.25, appear=(0, 1))
    path = write_video(tmp_path / "blip.mp4", frames)
    reports = api.index_videos([str(path)], str(tmp_path / "lib"), TINY, device="cpu")
    assert reports[0].frames == 1


# ----------------------------------------------------------------------------- queries


def test_query_images_of_every_kind(tmp_path):
    rgb = object_crop("coffee")
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "deep.png")
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "deep.png"):
        img = queries.load_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == rgb.shape[:2] + (3,), name
        assert img.mean() > 40, name  # not black: 16-bit scaled down, CMYK inverted properly
    (tmp_path / "notes.png").write_text("hello")
    (tmp_path / "broken.jpg").write_bytes((tmp_path / "cmyk.jpg").read_bytes()[:300])
    with pytest.raises(InputError, match="not an image"):
        queries.load_image(tmp_path / "notes.png")
    with pytest.raises(InputError, match="damaged|not an image"):
        queries.load_image(tmp_path / "broken.jpg")


def test_tiny_crop_warns_but_answers(library, tmp_path):
    Image.fromarray(object_crop("coffee")).resize((24, 22)).save(tmp_path / "tiny.png")
    result = cli("find", "-q", tmp_path / "tiny.png", "-l", library, "--json", "--device", "cpu")
    assert result.exit_code == 0 and "recall will be poor" in result.stderr
    json.loads(result.stdout)


def test_box_past_the_image_warns_and_names_corners(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 360, 3), np.uint8)).save(tmp_path / "frame.png")
    frame = str(tmp_path / "frame.png")
    # corners 200,100 - 260,180 passed as X,Y,W,H: cut to 200..360 x 100..240, and the hint
    (q,) = queries.make_queries([frame], ["200,100,260,180"])
    assert q.box == (200.0, 100.0, 360.0, 240.0)
    assert len(q.warnings) == 1 and "reaches past frame.png (360x240 pixels)" in q.warnings[0]
    assert "give --box 200,100,60,80" in q.warnings[0]
    # past the edge but not readable as corners (x2 < x1): the cut is said, no hint
    (q,) = queries.make_queries([frame], ["300,100,100,50"])
    assert len(q.warnings) == 1 and "was cut to fit" in q.warnings[0] and "corners" not in q.warnings[0]
    # inside, or touching the edge exactly: nothing to say
    for text in ("200,100,60,80", "0,0,360,240", "10,10,350,230"):
        (q,) = queries.make_queries([frame], [text])
        assert q.warnings == [], text


def test_plain_query_warns(tmp_path):
    rng = np.random.default_rng(0)
    sky = np.clip(np.array([70, 100, 160]) + rng.normal(0, 2, (120, 160, 3)), 0, 255).astype(np.uint8)
    frame = sky.copy()
    frame[20:84, 90:150] = object_crop("coffee")[::4, ::4][:64, :60]
    Image.fromarray(sky).save(tmp_path / "sky.png")
    Image.fromarray(frame).save(tmp_path / "frame.png")
    Image.fromarray(object_crop("coffee")).save(tmp_path / "coffee.png")
    plain = lambda q: [m for m in q.warnings if "nearly plain" in m]
    (q,) = queries.make_queries([str(tmp_path / "sky.png")], [])
    assert len(plain(q)) == 1 and "sky.png" in plain(q)[0]
    (q,) = queries.make_queries([str(tmp_path / "frame.png")], ["10,20,60,60"])  # a box on the sky part
    assert len(plain(q)) == 1
    (q,) = queries.make_queries([str(tmp_path / "frame.png")], ["90,20,60,64"])  # a box on the object
    assert plain(q) == []
    (q,) = queries.make_queries([str(tmp_path / "coffee.png")], [])
    assert plain(q) == []


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.integers(1, 4000), st.integers(1, 4000))
def test_fuzzed_boxes_give_a_box_inside_or_a_clear_error(text, w, h):
    try:
        box = queries.box_in_image(queries.parse_box(text), (h, w, 3), "img")
    except InputError:
        return
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and x2 - x1 >= 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=16), st.from_regex(r"\d{1,3}:\d{1,3}:\d{1,3}[:;]\d{1,3}", fullmatch=True)),
       st.sampled_from([Fraction(24), Fraction(30000, 1001), Fraction(25), Fraction(24000, 1001)]))
def test_fuzzed_times_parse_or_fail_clearly(text, rate):
    from vidsearch.timecode import parse_time

    try:
        t = parse_time(text, rate)
    except InputError:
        return
    assert t >= 0 and np.isfinite(t)


# ----------------------------------------------------------------------------- library


def test_newer_schema_is_refused(library):
    db = sqlite3.connect(library / "catalog.sqlite")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    result = cli("status", "-l", library)
    assert result.exit_code == 2 and "newer" in result.output and "upgrade vidsearch" in result.output


def test_disk_full_while_writing_a_shard_leaves_the_library_as_it_was(library, clips, monkeypatch):
    before, rows = snapshot(library), catalog_rows(library)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    result = cli("index", clips["videos"][1], "-l", library, "--device", "cpu")
    assert result.exit_code == 2 and "no space left" in result.output
    monkeypatch.undo()
    assert catalog_rows(library) == rows
    lib = Library.open(library)
    with lib.writer():  # the next writer cleans the pending row; then all is as before
        pass
    assert snapshot(library) == before and catalog_rows(library) == rows and lib.verify() == []


def test_corrupt_index_is_rebuilt_and_corrupt_shard_is_skipped(library, clips, tmp_path):
    api.index_videos([str(clips["videos"][1])], str(library), None, device="cpu")
    args = ("find", "-q", clips["crop"], "-l", library, "--json", "--device", "cpu", "--min-score", "-1", "--no-verify")
    before = json.loads(cli(*args).stdout)["segments"]
    assert {Path(s["video"]).name for s in before} == {"clip0.mp4", "clip1.mp4"}
    for f in (library / "index").glob("*.faiss"):
        f.write_bytes(b"garbage")
    result = cli(*args)
    assert result.exit_code == 0 and json.loads(result.stdout)["segments"] == before
    (library / "shards" / "v1.npz").write_bytes(b"not a shard")
    result = cli(*args)
    assert result.exit_code == 0 and "shard is unreadable" in result.stderr
    assert {Path(s["video"]).name for s in json.loads(result.stdout)["segments"]} == {"clip1.mp4"}
    st = cli("status", "-l", library)
    assert "shard unreadable" in st.stderr
    st = json.loads(cli("status", "-l", library, "--json").stdout)
    assert [Path(v["path"]).name for v in st["videos"]] == ["clip1.mp4"]
    assert [Path(v["path"]).name for v in st["unreadable"]] == ["clip0.mp4"]


@pytest.mark.parametrize("what", ["missing", "corrupt", "architecture"])
def test_bad_weights(tmp_path, clips, what):
    import torch

    path = tmp_path / "w.pth"
    if what == "corrupt":
        path.write_bytes(b"\x00" * 100)
    elif what == "architecture":
        torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, path)
    result = cli("index", clips["videos"][0], "-l", tmp_path / "lib", "--preset", TINY, "--weights", path)
    msg = {"missing": "does not exist", "corrupt": "cannot be read", "architecture": "do not fit"}[what]
    assert result.exit_code == 2 and msg in result.output and "Traceback" not in result.output
    assert not (tmp_path / "lib" / "shards").exists()


@pytest.mark.parametrize("args,msg", [
    (["index", "V", "--batch", "0"], "--batch"),
    (["index", "V", "--every-n", "-2"], "--every-n"),
    (["index", "V", "--fps", "-1"], "--fps"),
    (["find", "-q", "Q", "--top", "0"], "--top"),
    (["export", "R", "-f", "edl", "-o", "x.edl", "--handles", "-1"], "handles"),
])
def test_negative_numbers(args, msg, clips, library, tmp_path):
    hits = tmp_path / "hits.json"
    hits.write_text('{"segments": []}')
    sub = {"V": str(clips["videos"][0]), "Q": str(clips["crop"]), "R": str(hits), "x.edl": str(tmp_path / "x.edl")}
    result = cli(*[sub.get(a, a) for a in args], "-l", library) if args[0] != "export" else cli(*[sub.get(a, a) for a in args])
    assert result.exit_code != 0 and msg in result.output


# ----------------------------------------------------------------------------- crashes and concurrency


def _index_cmd(lib, videos):
    return [sys.executable, "-m", "vidsearch", "index", *map(str, videos), "-l", str(lib), "--preset", TINY,
            "--device", "cpu", "--wait", "60"]


def test_kill_9_at_random_points_never_breaks_the_library(clips, tmp_path):
    lib = tmp_path / "lib"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    for attempt in range(4):
        proc = subprocess.Popen(_index_cmd(lib, clips["videos"]), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(1.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (lib / "catalog.sqlite").exists():
            problems = Library.open(lib).verify()
            assert problems == [], (attempt, problems)
            status = api.status(str(lib))
            assert status["regions"] == sum(v["regions"] for v in status["videos"])
            if status["videos"]:
                api.find([str(clips["crop"])], library=str(lib), device="cpu")
    assert kills >= 1
    done = subprocess.run(_index_cmd(lib, clips["videos"]), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    status = api.status(str(lib))
    assert sorted(Path(v["path"]).name for v in status["videos"]) == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert status["index"]["current"] and Library.open(lib).verify() == []
    assert sorted(p.name for p in (lib / "shards").iterdir()) == sorted(f"v{v['id']}.npz" for v in status["videos"])


def test_readers_during_a_write_never_see_a_torn_library(clips, tmp_path):
    lib = tmp_path / "lib"
    api.index_videos([str(clips["videos"][0])], str(lib), TINY, device="cpu")
    proc = subprocess.Popen(_index_cmd(lib, clips["videos"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    try:
        while proc.poll() is None:
            status = api.status(str(lib))
            assert Library.open(lib).verify() == []
            seen.add(len(status["videos"]))
            result = api.find([str(clips["crop"])], library=str(lib), device="cpu")
            assert result.result.segments is not None
    finally:
        proc.wait()
    assert proc.returncode == 0 and 1 in seen
    assert len(api.status(str(lib))["videos"]) == 3
    # the whitening threshold (8 regions) was crossed while writing: the index followed it
    st = api.status(str(lib))
    assert st["regions"] >= 8, st["regions"]
    assert st["whitening"] is not None and st["index"]["current"]


def test_find_uses_the_whitening_its_index_was_built_with(clips, tmp_path, monkeypatch):
    """A writer may refit whitening.npz between a reader's loading of the index and its search
    (seen once as a ValueError in the test above): the query must still be whitened as the
    index was."""
    from vidsearch.dasr.whitening import Whitening

    library = tmp_path / "lib"
    api.index_videos([str(v) for v in clips["videos"]], str(library), TINY, device="cpu")
    assert (library / "whitening.npz").exists()
    before = api.find([str(clips["crop"])], library=str(library), device="cpu", refine=False).to_dict()
    real_load = Library.load_index

    def load_then_refit(self, save=False):
        out = real_load(self, save)
        dim = out[0].d
        other = Whitening.fit(np.random.default_rng(1).normal(size=(64, dim)), dims=dim // 2, version=99)
        with open(self.root / "whitening.npz", "wb") as f:
            np.savez(f, **other.to_arrays())
        return out

    monkeypatch.setattr(Library, "load_index", load_then_refit)
    after = api.find([str(clips["crop"])], library=str(library), device="cpu", refine=False).to_dict()
    assert after["segments"] == before["segments"] and after["query"]["threshold"] == before["query"]["threshold"]


def test_paper_preset_without_resnet_weights_says_how_to_get_them(clips, tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self, *a, **k):
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = cli("index", clips["videos"][0], "-l", tmp_path / "lib", "--preset", "paper", "--device", "cpu")
    assert result.exit_code == 2 and "--weights FILE" in result.output and "VIDSEARCH_WEIGHTS" in result.output
    assert not (tmp_path / "lib").exists()  # a first index that failed leaves no library behind
