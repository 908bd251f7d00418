"""End to end through the real CLI, on videos the tests generate from real photos."""

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidsearch import api
from vidsearch.cli import out
from vidsearch.sample import make_sample, object_crop
from vidsearch.timecode import seconds_to_tc

from .helpers import iou, run

PRESET = str(Path(__file__).parent / "presets" / "e2e.toml")




@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    video = root / "clip with spaces é.mp4"
    truth = make_sample(video, seconds=10.0, appear=(3.0, 7.0), obj="coffee")
    other = root / "other.mp4"
    make_sample(other, seconds=3.0, appear=(9.0, 9.0), obj="coffee")  # never shows the cup
    crop = root / "cup.png"
    Image.fromarray(object_crop("coffee")).save(crop)
    lib = root / "lib"
    result = run("index", video, other, "--library", lib, "--preset", PRESET, "--device", "cpu")
    assert "indexed" in result.output
    return {"root": root, "video": video, "other": other, "truth": truth, "crop": crop, "lib": lib}


def find_json(world, *extra, lib=None):
    result = run("find", "--query", world["crop"], "--library", lib or world["lib"], "--json", "--device", "cpu", *extra)
    return json.loads(result.stdout)


def test_find_returns_the_time_range_first_with_good_boxes(world):
    data = find_json(world)
    seg = data["segments"][0]
    assert Path(seg["video"]) == world["video"].resolve()
    assert seg["start"] == pytest.approx(3.0, abs=1.01) and seg["end"] == pytest.approx(7.0, abs=1.01)
    truth = world["truth"]
    hits = seg["hits"]
    assert len(hits) >= 3
    ious = [iou(h["box"], truth.box_at(h["frame"])) for h in hits if truth.box_at(h["frame"])]
    assert len(ious) == len(hits)  # every hit frame really shows the cup
    assert sum(v >= 0.5 for v in ious) > len(ious) / 2
    # nothing from the video that never shows it scores above the threshold
    assert all(Path(s["video"]).name != "other.mp4" for s in data["segments"])


def test_segments_are_whole_shots_or_end_on_samples(world):
    """The clip cuts between photos every 2.5 s; the cup is seen from 3 s to 7 s, so its hits
    (sampled at 1 s) lie in the shots 2.5-5 s and 5-7.5 s: snapped, the segment is exactly those."""
    pytest.importorskip("scenedetect")
    seg = find_json(world, "--no-refine")["segments"][0]
    assert seg["snap"] == "shots"
    assert round(seg["start"] * 24) == 60 and round(seg["end"] * 24) == 180
    assert seg["start_tc"] == "00:00:02:12" and seg["end_tc"] == "00:00:07:12"
    plain = find_json(world, "--no-refine", "--snap", "samples")["segments"][0]
    assert plain["snap"] == "samples" and plain["start"] == pytest.approx(3.0) and plain["end"] == pytest.approx(7.0)
    assert len(seg["hits"]) == len(plain["hits"])


def test_segments_are_matched_and_verified_before_they_widen_to_shots(world, monkeypatch):
    """In a long take the object comes and goes: find matches and verifies each run of sampled
    frames on its own, and only the runs it keeps widen to their shots (and merge there)."""
    pytest.importorskip("scenedetect")
    given, real = [], api.rerank_segments

    def spy(engine, queries, segments, depth, *args, **kwargs):
        given.extend(s.snap for s in segments[:depth])
        return real(engine, queries, segments, depth, *args, **kwargs)

    monkeypatch.setattr(api, "rerank_segments", spy)
    found = api.find([str(world["crop"])], library=str(world["lib"]), device="cpu", refine=False)
    best = found.result.segments[0]
    assert given and set(given) == {"samples"}
    assert best.snap == "shots" and best.match is not None and round(best.start * 24) == 60


def test_json_schema(world):
    data = find_json(world)
    assert set(data) >= {"query", "library", "preset", "segments"}
    scores = [s["score"] for s in data["segments"]]
    assert scores == sorted(scores, reverse=True)
    for s in data["segments"]:
        assert set(s) >= {"video", "start", "end", "start_tc", "end_tc", "fps", "score", "snap", "best", "hits"}
        assert s["fps"] == "24" and s["start"] <= s["best"]["time"] < s["end"]
        assert s["start_tc"].count(":") == 3
        for h in s["hits"] + [s["best"]]:
            assert set(h) == {"time", "frame", "box", "score", "kind", "refined", "tc"} and h["kind"] in ("region", "frame")
            assert h["tc"] == seconds_to_tc(h["time"], Fraction(24))
            x1, y1, x2, y2 = h["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360  # the video's own pixels
            assert h["frame"] == round(h["time"] * 24)


def test_find_table_overlays_and_contact_sheet(world, tmp_path):
    result = run("find", "-q", world["crop"], "-l", world["lib"], "--out", tmp_path / "hits", "--device", "cpu")
    assert any(tc in result.output for tc in ("00:00:02:12", "00:00:03:00", "00:00:04:00"))  # the shot or the hit
    assert re.search(r"│ 00:00:0[3-6]:00 ", result.output)  # the best hit's own time, beside its box
    table = [line for line in result.output.splitlines() if line[:1] in "┏┃┡│└"]
    assert "best frame" in "".join(table) and max(map(len, table)) <= out.width  # the preview fits the terminal
    pngs = sorted(p.name for p in (tmp_path / "hits").glob("*.png"))
    assert "contact-sheet.png" in pngs and any(p.startswith("segment-001") for p in pngs)
    img = np.asarray(Image.open(tmp_path / "hits" / [p for p in pngs if p.startswith("segment-001")][0]))
    assert img.shape == (360, 640, 3)
    assert (np.abs(img.astype(int) - [255, 200, 0]).sum(-1) < 30).sum() > 200  # the box was drawn


def test_query_from_a_frame_of_the_video_with_a_box(world):
    t = world["truth"]
    x1, y1, x2, y2 = t.box_at(5 * 24)
    data = find_json(world, "--query-video", world["video"], "--at", "00:00:05:00", "--box", f"{x1},{y1},{x2-x1},{y2-y1}")
    seg = data["segments"][0]
    assert 2.0 <= seg["start"] <= 5.0 <= seg["end"] <= 8.0


def test_several_views_are_fused(world, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(object_crop("coffee")).resize((200, 185)).save(small)
    result = run("find", "-q", world["crop"], "-q", small, "-l", world["lib"], "--json", "--device", "cpu")
    data = json.loads(result.stdout)
    assert len(data["query"]["images"]) == 2
    assert 2.0 <= data["segments"][0]["start"] <= 4.0


def test_reindex_is_a_no_op_and_status_reports(world):
    before = api.status(str(world["lib"]))
    result = run("index", world["video"], "--library", world["lib"], "--device", "cpu")
    assert "unchanged" in result.output
    after = api.status(str(world["lib"]))
    assert after["regions"] == before["regions"] and len(after["videos"]) == 2
    result = run("status", "--library", world["lib"])
    assert "2 videos" in result.output and "e2e" in result.output


def test_same_video_under_another_path_is_not_indexed_twice(world, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(world["lib"], lib)
    copy = tmp_path / "copy.mp4"
    shutil.copy(world["video"], copy)
    result = run("index", copy, "--library", lib, "--device", "cpu")
    assert "duplicate" in result.output


def test_remove_drops_a_video(world, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(world["lib"], lib)
    run("remove", world["video"], "--library", lib)
    st = api.status(str(lib))
    assert [Path(v["path"]).name for v in st["videos"]] == ["other.mp4"]
    assert st["index"]["current"]
    data = find_json(world, lib=lib)
    assert all(Path(s["video"]).name == "other.mp4" for s in data["segments"])
    assert not run("remove", world["video"], "--library", lib, ok=False).exit_code == 0


def test_interrupted_index_loses_nothing_and_resumes(world, tmp_path):
    lib = tmp_path / "lib"
    first = tmp_path / "first.mp4"
    second = tmp_path / "second.mp4"
    make_sample(first, seconds=2.0, appear=(0.0, 1.0))
    make_sample(second, seconds=4.0, appear=(1.0, 3.0))
    api.index_videos([str(first)], str(lib), PRESET, device="cpu")
    with pytest.raises(KeyboardInterrupt):  # dies after two frames of the second video
        api.index_videos([str(first), str(second)], str(lib), None, device="cpu", stop_after=2)
    st = api.status(str(lib))
    assert [Path(v["path"]).name for v in st["videos"]] == ["first.mp4"]
    result = run("index", first, second, "--library", lib, "--device", "cpu")
    assert "unchanged" in result.output and "indexed" in result.output
    st = api.status(str(lib))
    assert sorted(Path(v["path"]).name for v in st["videos"]) == ["first.mp4", "second.mp4"]
    assert st["index"]["current"] and st["videos"][1]["frames"] == 4
    assert sorted(p.name for p in (lib / "shards").iterdir()) == [f"v{v['id']}.npz" for v in st["videos"]]


def test_changed_video_is_reindexed(tmp_path):
    lib, video = tmp_path / "lib", tmp_path / "v.mp4"
    make_sample(video, seconds=2.0, appear=(0.0, 1.0))
    api.index_videos([str(video)], str(lib), PRESET, device="cpu")
    make_sample(video, seconds=3.0, appear=(0.0, 1.0))
    reports = api.index_videos([str(video)], str(lib), None, device="cpu")
    assert reports[0].status == "replaced"
    st = api.status(str(lib))
    assert len(st["videos"]) == 1 and st["videos"][0]["frames"] == 3


def test_errors_are_one_line_and_leave_the_library_alone(world, tmp_path):
    lib = tmp_path / "lib"
    shutil.copytree(world["lib"], lib)
    before = sorted((p.name, p.stat().st_size) for p in lib.rglob("*") if p.is_file() and "wal" not in p.name and "shm" not in p.name)
    cases = [
        (["find", "-q", tmp_path / "nope.png", "-l", lib], "does not exist"),
        (["find", "-q", world["crop"], "-l", lib, "--box", "1,2,3"], "X,Y,W,H"),
        (["find", "-q", world["crop"], "-l", lib, "--box", "5000,5000,10,10"], "outside"),
        (["find", "-q", world["crop"], "-l", lib, "--box", "0,0,0,10"], "zero"),
        (["find", "--query-video", world["video"], "--at", "99:00:00:00", "--box", "0,0,50,50", "-l", lib], "outside"),
        (["find", "--query-video", world["video"], "--at", "soon", "--box", "0,0,50,50", "-l", lib], "not seconds"),
        (["index", world["video"], "-l", lib, "--preset", "paper"], "does not match"),
        (["index", world["video"], "-l", lib, "--preset", "nosuch"], "unknown preset"),
        (["index", world["video"], "-l", lib, "--fps", "0"], "--fps"),
        (["index", tmp_path, "-l", lib], "directory"),
        (["status", "-l", world["root"]], "not a vidsearch library"),
    ]
    for args, msg in cases:
        result = run(*args, ok=False)
        assert result.exit_code != 0, args
        assert msg in result.output, (args, result.output)
        assert "Traceback" not in result.output
    after = sorted((p.name, p.stat().st_size) for p in lib.rglob("*") if p.is_file() and "wal" not in p.name and "shm" not in p.name)
    assert before == after


def test_second_writer_is_told_who_holds_the_lock(world, tmp_path):
    from vidsearch.library import Library

    lib = tmp_path / "lib"
    shutil.copytree(world["lib"], lib)
    holder = Library.open(lib)
    try:
        with holder.writer():
            result = run("index", world["video"], "-l", lib, ok=False)
            assert result.exit_code == 3 and "being written by pid" in result.output
    finally:
        holder.close()
    assert "unchanged" in run("index", world["video"], "-l", lib).output


def test_ntsc_video_with_start_timecode_exports_a_relinkable_edl(world, tmp_path):
    import io as _io

    import pycmx

    from vidsearch.sample import render_frames, write_video

    frames, truth = render_frames(fps=Fraction(30000, 1001), seconds=4.0, appear=(1.0, 3.0))
    video = write_video(tmp_path / "A001_C007.mov", frames, Fraction(30000, 1001), timecode="01:00:00;00")
    lib = tmp_path / "lib"
    run("index", video, "-l", lib, "--preset", PRESET, "--device", "cpu", "--decode-workers", "2")
    edl_path = tmp_path / "selects.edl"
    result = run("find", "-q", world["crop"], "-l", lib, "--json", "--export", "edl", "-o", edl_path, "--device", "cpu")
    seg = json.loads(result.stdout)["segments"][0]
    assert seg["fps"] == "30000/1001" and seg["media_start_tc"] == "01:00:00;00"
    assert seg["start_tc"].startswith("01:00:0") and ";" in seg["start_tc"]
    assert seg["best"]["tc"] == seconds_to_tc(seg["best"]["time"], Fraction(30000, 1001), start_tc="01:00:00;00")
    assert seg["best"]["tc"].startswith("01:00:0") and ";" in seg["best"]["tc"]
    text = edl_path.read_text()
    assert "FCM: DROP FRAME" in text
    (edit,) = [e.edits[0] for e in pycmx.parse_cmx3600(_io.StringIO(text)).events if e.edits][:1]
    assert edit.source_in == seg["start_tc"] and edit.source_out == seg["end_tc"]
    assert edit.record_in == "01:00:00;00" and edit.clip_name == "A001_C007.mov"
    # the cup is seen from 1 s to 3 s, in the first shot (0 to 2.5 s) and the second: snapped to shots,
    # the select starts with the clip and ends at the next cut (frame 75 at 29.97)
    assert seg["snap"] == "shots" and seg["start"] == 0.0 and seg["end"] == pytest.approx(75 * 1001 / 30000)


def test_results_page_of_a_multi_video_result(world, tmp_path):
    """find --html on a library where the cup is in two videos: one card per segment with the
    boxes drawn; in headless Chromium (where installed) the player seeks to a clicked hit."""
    from .chromium import Browser, find_chromium
    from .test_report import Cards, on_box_edges

    lib = tmp_path / "lib"
    shutil.copytree(world["lib"], lib)
    second = tmp_path / "take #2 & more.mp4"
    make_sample(second, seconds=4.0, appear=(1.0, 3.0), obj="coffee")
    run("index", second, "-l", lib, "--device", "cpu")
    out = tmp_path / "page"
    result = run("find", "-q", world["crop"], "-l", lib, "--json", "--html", out, "--device", "cpu")
    data = json.loads(result.stdout)
    videos = {Path(s["video"]).name for s in data["segments"]}
    assert {world["video"].name, second.name} <= videos
    parser = Cards()
    parser.feed((out / "index.html").read_text())
    assert len(parser.cards) == len(data["segments"])
    for card, seg in zip(parser.cards, data["segments"]):
        best = np.asarray(Image.open(out / card["imgs"][0]))
        assert on_box_edges(best, seg["best"]["box"], best.shape[1] / seg["width"]) > 0.8
        assert len(card["hits"]) == min(8, len(seg["hits"]))
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed: the page's player was not checked in a browser")
    n = 1 + next(i for i, s in enumerate(data["segments"]) if Path(s["video"]).name == second.name)
    with Browser(chromium) as browser:
        browser.open((out / "index.html").as_uri() + f"#check={n}")
        check = json.loads(browser.wait_for("document.body && document.body.dataset.check", 30) or "{}")
        assert check.get("event") == "seeked", check
        assert check["src"].endswith("take%20%232%20%26%20more.mp4") and check["box"] == "block"
        assert check["time"] == pytest.approx(data["segments"][n - 1]["best"]["time"], abs=0.05)
        # a thumbnail of a card of the other video: that video is loaded and played from that hit
        k = 1 + next(i for i, s in enumerate(data["segments"]) if Path(s["video"]).name != second.name)
        t = float(parser.cards[k - 1]["hits"][-1]["data-t"])
        browser.evaluate(f"document.querySelector('#seg-{k} .hit:last-child').click()")
        seeked = browser.wait_for(f"(() => {{ const p = document.getElementById('player'); return !p.seeking && "
                                  f"p.currentSrc === new URL(document.getElementById('seg-{k}').dataset.video, "
                                  f"location.href).href && Math.abs(p.currentTime - {t}) < 0.05; }})()", 30)
        assert seeked
        shot = tmp_path / "page.png"
        browser.screenshot(str(shot))
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 500 and img.std() > 20  # a page was drawn, not a blank


def test_demo_runs_its_three_steps(tmp_path):
    """The README's first command (here with the tiny preset): a sample video, a library, a page."""
    tiny = Path(__file__).parent / "presets" / "tiny.toml"
    result = run("demo", "--dir", tmp_path / "demo", "--preset", tiny, "--device", "cpu")
    assert "3/3" in result.output
    assert (tmp_path / "demo" / "library" / "catalog.sqlite").exists()
    assert (tmp_path / "demo" / "page" / "index.html").exists()
    # run again after "an upgrade" changed the preset: the demo's own library starts afresh
    changed = tmp_path / "tiny.toml"
    changed.write_text(tiny.read_text().replace("long_side = 128", "long_side = 160"))
    again = run("demo", "--dir", tmp_path / "demo", "--preset", changed, "--device", "cpu")
    assert "started afresh" in again.output and "3/3" in again.output
    assert "started afresh" not in run("demo", "--dir", tmp_path / "demo", "--preset", changed, "--device", "cpu").output


def test_the_cli_starts_without_torch():
    """Commands that never touch the network (--help, status, list, export, remove) start in a
    fraction of a second: importing torch and torchvision took 2.4 s of every call."""
    import subprocess
    import sys

    code = "import sys, vidsearch.cli; print(sorted(m for m in ('torch', 'torchvision', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "[]"
