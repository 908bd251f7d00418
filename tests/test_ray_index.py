"""`index --ray`: Ray Data in local mode gives the library a plain `index` gives, and neither a
killed worker nor a killed driver leaves it inconsistent."""

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")

from tests.helpers import run  # noqa: E402
from vidsearch import api, ray_index  # noqa: E402
from vidsearch.library import Library  # noqa: E402
from vidsearch.sample import make_sample, object_crop, render_frames, write_video  # noqa: E402

TINY = str(Path(__file__).parent / "presets" / "tiny.toml")
# 4 samples a second, chunks of 4 samples, batches of 2: the 6-s clip is 6 chunks, the AVI
# (no timestamps: PyAV) is cut into pieces as it decodes, the 2-s clip is one chunk.
ARGS = ["--preset", TINY, "--device", "cpu", "--fps", "4", "--batch", "2"]
RAY = ["--ray", "--chunk-frames", "4"]


# ----------------------------------------------------------------------------- planning


def test_chunk_boundaries_fall_on_batches_and_after_keyframes():
    chunks = ray_index.split_at_keyframes(list(range(100)), [0, 37, 70], length=30, batch=5)
    # 40 is the first multiple of 5 at or after the keyframe 37; 70 is a keyframe itself
    assert [(c[0], len(c)) for c in chunks] == [(0, 40), (40, 30), (70, 30)]
    # one GOP (or every frame a keyframe): boundaries where they are due
    assert [(c[0], len(c)) for c in ray_index.split_at_keyframes(list(range(100)), [0], 30, 5)] == \
        [(0, 30), (30, 30), (60, 40)]
    # sampled frames, not every frame: the boundary goes to the sample after keyframe 372
    chunks = ray_index.split_at_keyframes(list(range(0, 1000, 10)), [0, 372, 695], 30, 5)
    assert [c[0] for c in chunks] == [0, 400, 700]
    # short videos are one chunk; every sample is in exactly one chunk, in order
    assert ray_index.split_at_keyframes(list(range(7)), [0], 30, 2) == [list(range(7))]
    assert sum(ray_index.split_at_keyframes(list(range(0, 500, 3)), [0, 99, 250], 16, 4), []) == list(range(0, 500, 3))


def test_chunks_hold_a_bounded_amount_of_decoded_frames():
    assert ray_index.chunk_length(512, 288, 8) == 256  # 0.4 MB frames: the count limit
    n = ray_index.chunk_length(3840, 2160, 8)  # 25 MB frames: the memory limit
    assert n % 8 == 0 and n * 3840 * 2160 * 3 <= ray_index.CHUNK_BYTES
    assert ray_index.chunk_length(8192, 8192, 4) == 4  # never less than one batch


def _piece(tmp_path, vid: int, piece: int, first: int, n: int, last: bool, stopped: str = "") -> dict:
    """A piece's summary row as an extract actor returns it, with its file written."""
    frames = np.arange(first, first + n, dtype=np.int64)
    arrays = {"frame": frames, "time": frames / 4.0, "box": np.zeros((n, 4), np.float32),
              "score": np.ones(n, np.float32), "desc": np.zeros((n, 8), np.float16),
              "level": np.ones(n, np.int8), "kind": np.zeros(n, np.int8),
              "sample_frame": frames, "sample_time": frames / 4.0}
    path = tmp_path / f"v{vid}.p{piece}.npz"
    np.savez(path, **arrays)
    return {"video_id": vid, "piece": piece, "last": last, "frames": n, "regions": n, "stopped": stopped,
            "error": "", "has_pts": True, "part": str(path)}


def test_pieces_are_joined_in_order_once_all_are_in(tmp_path):
    from vidsearch.video import Sampler, VideoInfo

    info = VideoInfo(tmp_path / "a.mp4", 320, 180, Fraction(4), 40, 10.0, "h264")
    jobs = {1: ray_index.Job(info.path, info, 1, Sampler(fps=4.0), 128, "decord"),
            2: ray_index.Job(info.path, info, 2, Sampler(fps=4.0), 128, "decord")}
    pending = {1: ray_index._Pieces(), 2: ray_index._Pieces()}
    rows = [_piece(tmp_path, 1, 2, 8, 4, last=True), _piece(tmp_path, 1, 0, 0, 4, last=False),
            _piece(tmp_path, 2, 0, 0, 4, last=False),
            _piece(tmp_path, 2, 1, 4, 2, last=False, stopped="decoding stopped near frame 6 (DECORDError)"),
            _piece(tmp_path, 1, 0, 0, 4, last=False),  # a retried call: the same piece again
            _piece(tmp_path, 1, 1, 4, 4, last=False), _piece(tmp_path, 2, 2, 12, 4, last=True)]
    outcomes = list(ray_index._collect(iter(rows), pending, jobs, with_cuts=False))
    # video 1 completes when its middle piece arrives, joined in order; video 2 keeps what
    # decoded up to the piece that stopped, and says so
    assert [o.job.video_id for o in outcomes] == [1, 2] and not pending
    assert outcomes[0].arrays["sample_frame"].tolist() == list(range(12)) and outcomes[0].frames == 12
    assert outcomes[1].arrays["frame"].tolist() == list(range(6)) and "truncated" in outcomes[1].note
    # a run that ends with a video's pieces missing reports it instead of committing a hole
    pending = {1: ray_index._Pieces()}
    lost = list(ray_index._collect(iter(rows[:1]), pending, jobs, with_cuts=False))
    assert lost[0].error.startswith("the Ray run ended before")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_videos")
    make_sample(root / "long.mp4", seconds=6.0, appear=(1.0, 4.0), size=(320, 180))
    make_sample(root / "short.mp4", seconds=2.0, appear=(0.0, 1.5), size=(320, 180))
    frames, _ = render_frames(size=(192, 108), seconds=3.0, appear=(0.5, 2.5))
    write_video(root / "nopts.avi", frames, Fraction(24))
    crop = root / "cup.png"
    from PIL import Image

    Image.fromarray(object_crop("coffee")).save(crop)
    return {"paths": [root / "long.mp4", root / "short.mp4", root / "nopts.avi"], "crop": crop}


@pytest.fixture(scope="module")
def plain(videos, tmp_path_factory):
    lib = tmp_path_factory.mktemp("plain") / "lib"
    run("index", *videos["paths"], "-l", lib, *ARGS)
    return lib


def _cli(lib, paths, *extra, env=None):
    cmd = [sys.executable, "-m", "vidsearch", "index", *map(str, paths), "-l", str(lib), *ARGS, *RAY, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def _same_library(a: Path, b: Path, crop: Path) -> None:
    """Every video has the same shard, array for array, and a query gets the same hits."""
    la, lb = Library.open(a), Library.open(b)
    try:
        assert lb.verify() == [] and not (b / "parts").exists()
        va = {v.path: v for v in la.videos()}
        vb = {v.path: v for v in lb.videos()}
        assert sorted(va) == sorted(vb)
        for path in va:
            assert (va[path].frames, va[path].regions, va[path].note) == (vb[path].frames, vb[path].regions, vb[path].note)
            with np.load(la.shard_path(va[path].id)) as za, np.load(lb.shard_path(vb[path].id)) as zb:
                assert sorted(za.files) == sorted(zb.files)
                for k in za.files:
                    assert np.array_equal(za[k], zb[k]), (path, k)
    finally:
        la.close()
        lb.close()
    ha = api.find([str(crop)], library=str(a), device="cpu", refine=False).to_dict()["segments"]
    hb = api.find([str(crop)], library=str(b), device="cpu", refine=False).to_dict()["segments"]
    assert ha and ha == hb  # segments, scores, every hit's frame, time and box


@pytest.mark.slow
def test_ray_index_gives_the_library_a_plain_index_gives(videos, plain, tmp_path):
    # the plan really splits: the long clip into chunks; the AVI goes to PyAV
    from vidsearch.video import Sampler, probe

    info = probe(videos["paths"][0])
    job = ray_index.Job(videos["paths"][0], info, 1, Sampler(fps=4.0), 128, "decord")
    assert len(ray_index.plan(job, batch=2, chunk_frames=4)) == 6
    avi = ray_index.Job(videos["paths"][2], probe(videos["paths"][2]), 2, Sampler(fps=4.0), 128, "decord")
    assert ray_index.plan(avi, batch=2, chunk_frames=4)[0]["pyav"]

    lib = tmp_path / "lib"
    done = _cli(lib, videos["paths"])
    assert done.returncode == 0, done.stderr
    _same_library(plain, lib, videos["crop"])
    # and a second run finds nothing to do
    again = _cli(lib, videos["paths"])
    assert again.returncode == 0 and again.stderr.count("unchanged") == 3, again.stderr


@pytest.mark.slow
def test_a_worker_killed_mid_video_is_retried(videos, plain, tmp_path):
    lib = tmp_path / "lib"
    marker = tmp_path / "killed"
    done = _cli(lib, videos["paths"], env={ray_index.KILL_ENV: str(marker)})
    assert done.returncode == 0, done.stderr
    assert marker.exists()  # the extract actor really died (SIGKILL) at a video's second piece
    _same_library(plain, lib, videos["crop"])


@pytest.mark.slow
def test_a_killed_driver_leaves_a_consistent_library_and_the_next_run_finishes(videos, plain, tmp_path):
    lib = tmp_path / "lib"
    # a first video committed, so the kill lands in a library with something to keep
    first = _cli(lib, videos["paths"][1:2])
    assert first.returncode == 0, first.stderr
    cmd = [sys.executable, "-m", "vidsearch", "index", *map(str, videos["paths"]), "-l", str(lib), *ARGS, *RAY,
           "--chunk-frames", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(lib.glob("parts/*/*.npz")):
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before any piece was written"
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray goes down with it
    proc.wait()
    parts = list(lib.glob("parts/*/*.npz"))
    assert parts  # pieces of unfinished videos were on disk at the kill

    reader = Library.open(lib)
    try:
        assert reader.verify() == []  # what committed is whole; pending rows do not count
        assert [Path(v.path).name for v in reader.videos()] == ["short.mp4"]
    finally:
        reader.close()
    status = api.status(str(lib))  # readers work on it as it is
    assert [Path(v["path"]).name for v in status["videos"]] == ["short.mp4"]

    done = _cli(lib, videos["paths"])  # the next writer drops the dead run and finishes the job
    assert done.returncode == 0, done.stderr
    _same_library(plain, lib, videos["crop"])
    try:  # Ray's node agents can outlive a driver killed this way: not this test's business
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_ray_errors_are_one_line(videos, tmp_path, monkeypatch):
    result = run("index", videos["paths"][1], "-l", tmp_path / "a", *ARGS, "--ray", "--chunk-frames", "3", ok=False)
    assert result.exit_code != 0 and "--chunk-frames must be a multiple of --batch" in result.output
    result = run("index", videos["paths"][1], "-l", tmp_path / "b", *ARGS, "--ray-workers", "0", "--ray", ok=False)
    assert result.exit_code != 0 and "--ray-workers must be at least 1" in result.output
    result = run("index", videos["paths"][1], "-l", tmp_path / "d", *ARGS, "--ray-workers", "2", ok=False)
    assert result.exit_code != 0 and "add --ray" in result.output
    monkeypatch.setattr(ray_index, "available", lambda: False)
    result = run("index", videos["paths"][1], "-l", tmp_path / "c", *ARGS, "--ray", ok=False)
    assert result.exit_code != 0 and "pip install 'vidsearch[ray]'" in result.output
    assert not any((tmp_path / d).exists() for d in "abcd")
