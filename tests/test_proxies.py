"""Proxies: originals found by name, results that name the original (timecode, reel, pixels)."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidsearch.errors import InputError
from vidsearch.proxies import find_original, original_stem
from vidsearch.sample import object_crop, render_frames, write_video

from .helpers import run

PRESET = str(Path(__file__).parent / "presets" / "e2e.toml")


@pytest.mark.parametrize("name,stem", [("A001_C002_proxy.mp4", "A001_C002"), ("clip-Proxy.mov", "clip"),
                                       ("clip.proxy.mp4", "clip"), ("clip_PROXY_1080p.mp4", "clip"),
                                       ("clip.mp4", "clip"), ("proxy.mp4", "proxy")])
def test_original_stem(name, stem):
    assert original_stem(Path(name)) == stem


def test_find_original_by_name(tmp_path):
    (tmp_path / "orig" / "day1").mkdir(parents=True)
    (tmp_path / "orig" / "day1" / "A001_C002.MOV").write_bytes(b"x")
    (tmp_path / "orig" / "A001_C002.xml").write_bytes(b"x")  # not a video
    proxy = tmp_path / "A001_C002_proxy.mp4"
    proxy.write_bytes(b"x")
    assert find_original(proxy, [tmp_path / "orig"]) == (tmp_path / "orig" / "day1" / "A001_C002.MOV").resolve()
    with pytest.raises(InputError, match="no original named A001_C003"):
        find_original(tmp_path / "A001_C003_proxy.mp4", [tmp_path / "orig"])
    (tmp_path / "orig" / "A001_C002.mxf").write_bytes(b"x")
    with pytest.raises(InputError, match="several originals"):
        find_original(proxy, [tmp_path / "orig"])


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """A 1280x720 25 fps camera original with start timecode 10:00:00:00, and its 640x360 proxy
    without timecode (the same picture, as NLEs make them), the cup seen from 2 s to 4 s."""
    root = tmp_path_factory.mktemp("proxies")
    (root / "originals").mkdir()
    (root / "proxies").mkdir()
    frames, _ = render_frames(size=(1280, 720), fps=Fraction(25), seconds=6.0, appear=(2.0, 4.0))
    original = write_video(root / "originals" / "A001_C007.mov", frames, Fraction(25), timecode="10:00:00:00")
    small = [np.asarray(Image.fromarray(f).resize((640, 360), Image.BILINEAR)) for f in frames]
    proxy = write_video(root / "proxies" / "A001_C007_proxy.mp4", small, Fraction(25))
    crop = root / "cup.png"
    Image.fromarray(object_crop("coffee")).save(crop)
    return root, original, proxy, crop


def test_results_name_the_original(footage, tmp_path):
    root, original, proxy, crop = footage
    lib = tmp_path / "lib"
    run("index", proxy, "-l", lib, "--preset", PRESET, "--device", "cpu")

    def find():
        out = run("find", "-q", crop, "-l", lib, "--json", "--device", "cpu", "--no-refine", "--snap", "samples")
        return json.loads(out.stdout)["segments"][0]

    plain = find()
    assert plain["video"] == str(proxy.resolve()) and "proxy" not in plain
    # the originals are given later: nothing is extracted again, the row learns its original
    result = run("index", proxy, "-l", lib, "--proxy-of", root / "originals")
    assert "unchanged" in result.output and "A001_C007.mov" in result.output.replace("\n", "")
    seg = find()
    assert seg["video"] == str(original.resolve()) and seg["proxy"]["path"] == str(proxy.resolve())
    assert (seg["width"], seg["height"], seg["fps"], seg["media_start_tc"]) == (1280, 720, "25", "10:00:00:00")
    assert seg["start"] == plain["start"] and seg["start_tc"].startswith("10:00:0")
    for mine, theirs in zip(seg["hits"], plain["hits"]):
        assert mine["box"] == pytest.approx([2 * v for v in theirs["box"]], abs=0.11)  # original pixels
        assert mine["frame"] == round(mine["time"] * 25)
        assert mine["tc"] == f"10:00:{int(mine['time']):02d}:{round(mine['time'] % 1 * 25):02d}"  # the original's timecode
    # exports point at the original: clip name, reel, source timecode
    hits = tmp_path / "hits.json"
    hits.write_text(json.dumps({"segments": [seg]}))
    run("export", hits, "-f", "edl", "-o", tmp_path / "sel.edl")
    edl = (tmp_path / "sel.edl").read_text()
    assert "FROM CLIP NAME:  A001_C007.mov" in edl and f" {seg['start_tc']} " in edl and "A001C007" in edl
    # the page takes its pictures from the proxy, and names the original
    run("report", hits, "-o", tmp_path / "page")
    page = (tmp_path / "page" / "index.html").read_text()
    assert "A001_C007_proxy.mp4" in page and ">A001_C007.mov<" in page
    assert (tmp_path / "page" / "img" / "seg-001-best.jpg").is_file()


def test_proxy_errors_are_one_line_and_index_nothing(footage, tmp_path):
    root, original, proxy, crop = footage
    lib = tmp_path / "lib"
    result = run("index", proxy, "-l", lib, "--proxy-of", tmp_path / "nowhere", ok=False)
    assert result.exit_code != 0 and "not a folder" in result.output and not lib.exists()
    result = run("index", proxy, "-l", lib, "--preset", PRESET, "--proxy-of", root / "proxies", ok=False)
    assert result.exit_code != 0 and "no original named A001_C007" in result.output and not lib.exists()


def test_index_with_originals_records_them(footage, tmp_path):
    from vidsearch import api

    root, original, proxy, crop = footage
    lib = tmp_path / "lib"
    run("index", proxy, "-l", lib, "--preset", PRESET, "--device", "cpu", "--proxy-of", root / "originals")
    (video,) = api.status(str(lib))["videos"]
    assert video["path"] == str(proxy.resolve()) and video["original"] == str(original.resolve())
    assert "proxy of" in run("status", "-l", lib).output
