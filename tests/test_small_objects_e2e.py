"""End to end on generated videos: a small object in full-HD footage, and one in a frame under
1280 px (SD, a proxy), is found by a crop of it; a crop of a frame that was sampled into the
library finds that frame."""

import json
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from vidsearch.sample import make_sample, write_video
from vidsearch.testsets import SeqSpec, collage, default_scenes, render_sequence
from vidsearch.video import grab_frame

from .helpers import iou, run

SMALL = str(Path(__file__).parent / "presets" / "small.toml")


def logo_and_cup(root: Path, size: tuple[int, int], px: int, seeds: tuple[int, int, int, int],
                 occluder_px: int) -> dict:
    """A `px` logo drifting over a scene (partly hidden in every third frame) and a distractor
    video with a `px` cup over another scene, 3 s at 12 fps, indexed with the test preset; the
    crop of the logo's first frame is the editor's query. Seeds: scenes, occluder, logo, cup."""
    scenes = default_scenes(size, 2, seed=seeds[0])
    occluder = collage(["grass", "brick", "gravel", "coins"], (occluder_px, occluder_px), seed=seeds[1])
    frames, boxes = render_sequence(SeqSpec("t", "logo", 0, px, seed=seeds[2]), scenes[0], size, 36, occluder)
    write_video(root / "target.mp4", frames, Fraction(12))
    x1, y1, x2, y2 = boxes[0]
    Image.fromarray(frames[0][y1:y2, x1:x2]).save(root / "crop.png")
    other, _ = render_sequence(SeqSpec("d", "cup", 1, px, seed=seeds[3]), scenes[1], size, 36, occluder)
    write_video(root / "other.mp4", other, Fraction(12))
    lib = root / "lib"
    run("index", root / "target.mp4", root / "other.mp4", "-l", lib, "-p", SMALL, "--device", "cpu")
    return {"root": root, "boxes": boxes, "lib": lib}


@pytest.fixture(scope="module")
def full_hd(tmp_path_factory):
    """A 70-px logo over a 1920x1080 scene (0.2 % of the frame) and a 70-px cup over another."""
    return logo_and_cup(tmp_path_factory.mktemp("smallhd"), (1920, 1080), 70, (5, 99, 3, 4), 256)


@pytest.fixture(scope="module")
def small_frame(tmp_path_factory):
    """A 26-px logo over a 640x360 scene and a 26-px cup over another. The test preset sees a
    640-px frame whole at 384 px (the logo 16 px, under one feature cell) and as 3x3 tiles
    enlarged 1.5x (the logo 39 px)."""
    return logo_and_cup(tmp_path_factory.mktemp("smallsd"), (640, 360), 26, (7, 98, 11, 12), 96)


def test_a_small_object_in_a_small_frame_is_found_in_enlarged_tiles(small_frame):
    from vidsearch.library import Library

    lib = Library.open(small_frame["lib"])
    try:
        assert all(set(lib.load_shard(v.id)["level"].tolist()) == {1, 3} for v in lib.videos())
    finally:
        lib.close()
    result = run("find", "-q", small_frame["root"] / "crop.png", "-l", small_frame["lib"], "--json", "--device", "cpu")
    segs = json.loads(result.stdout)["segments"]
    assert Path(segs[0]["video"]).name == "target.mp4"
    assert all(s["score"] < segs[0]["score"] for s in segs[1:])
    best = segs[0]["best"]
    assert iou(best["box"], small_frame["boxes"][best["frame"]]) >= 0.5  # refined onto the logo


def test_a_small_object_in_full_hd_is_found_by_its_crop(full_hd):
    result = run("find", "-q", full_hd["root"] / "crop.png", "-l", full_hd["lib"], "--json", "--device", "cpu")
    segs = json.loads(result.stdout)["segments"]
    assert Path(segs[0]["video"]).name == "target.mp4"  # its own video first
    assert all(s["score"] < segs[0]["score"] - 0.1 for s in segs[1:])  # by a clear margin
    best = segs[0]["best"]
    truth = full_hd["boxes"][best["frame"]]
    assert iou(best["box"], truth) > 0.1  # the box is on the logo, not elsewhere in the frame
    cx, cy = (best["box"][0] + best["box"][2]) / 2, (best["box"][1] + best["box"][3]) / 2
    assert abs(cx - (truth[0] + truth[2]) / 2) < 100 and abs(cy - (truth[1] + truth[3]) / 2) < 100


def test_the_library_holds_tile_regions_and_one_whole_frame_per_sample(full_hd):
    from vidsearch.library import Library

    lib = Library.open(full_hd["lib"])
    try:
        for v in lib.videos():
            shard = lib.load_shard(v.id)
            assert set(shard["level"].tolist()) == {1, 3}
            assert (shard["kind"] == 1).sum() == len(shard["sample_frame"]) == v.frames == 3
    finally:
        lib.close()


def test_a_crop_of_a_sampled_frame_finds_that_frame(tmp_path):
    video = tmp_path / "clip.mp4"
    make_sample(video, seconds=6.0, appear=(9.0, 9.0))  # 640x360 real photos, shots of 2.5 s
    lib = tmp_path / "lib"
    run("index", video, "-l", lib, "-p", SMALL, "--device", "cpu")
    frame = grab_frame(video, 4.0, 96)  # sampled at 1 frame/s
    h, w = frame.shape[:2]
    Image.fromarray(frame[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]).save(tmp_path / "third.png")
    result = run("find", "-q", tmp_path / "third.png", "-l", lib, "--json", "--device", "cpu")
    segs = json.loads(result.stdout)["segments"]
    assert segs and segs[0]["best"]["frame"] == 96


def test_refined_boxes_fit_the_object_and_keep_the_ranking(full_hd):
    args = ("find", "-q", full_hd["root"] / "crop.png", "-l", full_hd["lib"], "--json", "--device", "cpu")
    plain = json.loads(run(*args, "--no-refine").stdout)["segments"]
    refined = json.loads(run(*args).stdout)["segments"]
    key = lambda segs: [(s["video"], [(h["frame"], h["score"]) for h in s["hits"]]) for s in segs]  # noqa: E731
    assert key(plain) == key(refined)  # refinement moves boxes, never hits or scores
    hits = [(p, r) for sp, sr in zip(plain, refined) if Path(sr["video"]).name == "target.mp4"
            for p, r in zip(sp["hits"], sr["hits"])]
    assert hits and all(r["refined"] and not p["refined"] for p, r in hits)
    before = [iou(p["box"], full_hd["boxes"][p["frame"]]) for p, _ in hits]
    after = [iou(r["box"], full_hd["boxes"][r["frame"]]) for _, r in hits]
    assert min(after) >= 0.5, (before, after)  # the logo's own box on every hit frame
    assert sum(after) / len(after) > sum(before) / len(before) + 0.2, (before, after)


def test_rerank_orders_segments_by_the_querys_match(full_hd):
    """find re-ranks its first segments by the query-guided match (by default the first 20):
    here every segment is checked, the logo's own video comes first, and the JSON and
    the table show each segment's match; --rerank 0 leaves the region order and no match."""
    args = ("find", "-q", full_hd["root"] / "crop.png", "-l", full_hd["lib"], "--device", "cpu", "--no-verify")
    segs = json.loads(run(*args, "--json").stdout)["segments"]
    matches = [s["match"] for s in segs]
    assert None not in matches and matches == sorted(matches, reverse=True)
    assert Path(segs[0]["video"]).name == "target.mp4" and segs[0]["match"] > 0.5
    off = json.loads(run(*args, "--json", "--rerank", "0").stdout)["segments"]
    assert all(s["match"] is None for s in off)
    assert [s["score"] for s in off] == sorted((s["score"] for s in off), reverse=True)
    assert sorted((s["video"], s["start"]) for s in off) == sorted((s["video"], s["start"]) for s in segs)
    table = run(*args, "--no-previews").stdout
    assert "match" in table and f"{segs[0]['match']:.3f}" in table


def test_segments_whose_match_does_not_stand_out_are_dropped(full_hd):
    """The cup's video shares nothing with the logo but a region score the automatic threshold
    lets through: its segments are re-ranked below the logo's, and verification drops them
    (their match lies nearer the background than the logo's), says so, and --no-verify keeps them."""
    args = ("find", "-q", full_hd["root"] / "crop.png", "-l", full_hd["lib"], "--device", "cpu", "--json")
    every = json.loads(run(*args, "--no-verify").stdout)
    assert every["query"]["verify"] is None and every["query"]["match_threshold"] is None
    assert {Path(s["video"]).name for s in every["segments"]} == {"target.mp4", "other.mp4"}, every["segments"]
    result = run(*args)
    data = json.loads(result.stdout)
    v = data["query"]["verify"]
    assert [Path(s["video"]).name for s in data["segments"]] == ["target.mp4"]
    assert v["checked"] == len(every["segments"]) and v["dropped"] == len(every["segments"]) - 1
    assert v["best"] == data["segments"][0]["match"] > v["cut"] > v["background"]
    assert all(s["match"] < v["cut"] for s in every["segments"] if Path(s["video"]).name == "other.mp4")
    assert f"{v['dropped']} of {v['checked']} re-ranked segments dropped" in result.stderr.replace("\n", " ")
    # verified segments are taken at the background's cut alone, below the full threshold
    cut = data["query"]["match_threshold"]
    assert cut is None or cut < data["query"]["threshold"]
    assert all(h["score"] >= (cut or data["query"]["threshold"]) - 1e-4 for s in data["segments"] for h in s["hits"])


def test_a_verified_segment_is_followed_to_the_samples_the_region_score_missed(full_hd):
    """With --min-score at the logo's best region score, its video has one hit; following
    matches the query beside it and adds the other two samples, each boxed on the logo; --follow
    0 leaves the one hit."""
    args = ("find", "-q", full_hd["root"] / "crop.png", "-l", full_hd["lib"], "--device", "cpu", "--json",
            "--snap", "samples")
    best = json.loads(run(*args).stdout)["segments"][0]["score"]
    one = json.loads(run(*args, "--min-score", f"{best - 1e-4:.5f}", "--follow", "0").stdout)["segments"]
    assert [len(s["hits"]) for s in one] == [1]
    result = run(*args, "--min-score", f"{best - 1e-4:.5f}")
    segs = json.loads(result.stdout)["segments"]
    assert len(segs) == 1 and Path(segs[0]["video"]).name == "target.mp4"
    hits = segs[0]["hits"]
    assert [h["frame"] for h in hits] == [0, 12, 24]  # every sample: the logo is in all 36 frames
    followed = [h for h in hits if h["kind"] == "followed"]
    assert len(followed) == 2 and all(h["refined"] and h["score"] < best for h in followed)
    assert all(iou(h["box"], full_hd["boxes"][h["frame"]]) >= 0.5 for h in hits)
    assert (segs[0]["start"], segs[0]["end"]) == (0.0, 3.0)
    assert "2 frame(s) next to verified moments added" in result.stderr.replace("\n", " ")
