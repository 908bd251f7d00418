"""Views of a frame (tile levels, whole-frame region, merging), query views at the library's
scales, and search by each region's best query view."""

import faiss
import numpy as np
import pytest
import torch

from vidsearch.config import Preset, with_overrides
from vidsearch.dasr.query import DISTINCT, MAX_VIEW_FRACTION, MIN_VIEW_PX, SIZE_STEP, crop_sizes, on_canvas, query_views
from vidsearch.dasr.views import (KIND_FRAME, KIND_REGION, decode_long_side, frame_views, level_scales,
                                  merge_views, usable_levels)
from vidsearch.errors import InputError
from vidsearch.library import region_ids
from vidsearch.search import auto_threshold, retrieve

from .helpers import photo

TILED = Preset(tiles=(1, 2), tile_overlap=0.25, long_side=512)


def test_levels_only_where_tiles_are_not_enlarged():
    assert usable_levels(1920, 1080, TILED) == [1, 2]
    assert usable_levels(640, 360, TILED) == [1]  # 640 / 1.75 < 512: its tiles would be blown up
    assert usable_levels(640, 360, TILED.replace(max_upscale=2.0)) == [1, 2]
    assert decode_long_side(1920, 1080, TILED) == 896  # 512 * 1.75: what level 2 needs, not 1920
    assert decode_long_side(640, 360, TILED) == 512  # level 1 alone: the long side, as before
    assert decode_long_side(640, 360, TILED.replace(max_upscale=2.0)) == 640  # never above the source
    assert level_scales(1920, 1080, TILED) == pytest.approx({1: 512 / 1920, 2: 896 / 1920})


def test_tiles_cover_the_frame_with_the_asked_overlap():
    views = frame_views(896, 504, TILED)
    assert views[0].level == 1 and views[0].box == (0, 0, 896, 504)
    tiles = [v.box for v in views if v.level == 2]
    assert len(tiles) == 4 and all((x2 - x1, y2 - y1) == (512, 288) for x1, y1, x2, y2 in tiles)
    assert min(b[0] for b in tiles) == 0 and max(b[2] for b in tiles) == 896
    assert min(b[1] for b in tiles) == 0 and max(b[3] for b in tiles) == 504
    xs = sorted({b[0] for b in tiles})
    assert (512 - (xs[1] - xs[0])) / 512 == pytest.approx(0.25, abs=0.01)  # neighbours share a quarter


def test_presets_check_and_override_views():
    assert Preset(tiles=[2, 1, 2]).tiles == (1, 2)
    with pytest.raises(InputError, match="tiles must include 1"):
        Preset(tiles=(2,))
    p = with_overrides(Preset(), ["tiles=1,3", "whole_frame=true", "view_nms_iou=none", "long_side=384"])
    assert p.tiles == (1, 3) and p.whole_frame and p.view_nms_iou is None and p.long_side == 384
    with pytest.raises(InputError, match="not KEY=VALUE"):
        with_overrides(Preset(), ["colour=red"])
    with pytest.raises(InputError, match="not a valid value"):
        with_overrides(Preset(), ["long_side=big"])


def test_merge_keeps_whole_frames_and_drops_duplicates_across_views():
    boxes = torch.tensor([[0, 0, 100, 100], [10, 10, 50, 50], [11, 11, 51, 51], [60, 60, 90, 90], [0, 0, 100, 100.]])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.4, 0.1])
    frame = torch.tensor([0, 0, 0, 0, 1])
    kind = torch.tensor([KIND_FRAME, KIND_REGION, KIND_REGION, KIND_REGION, KIND_REGION], dtype=torch.int8)
    kept = sorted(merge_views(boxes, scores, frame, kind, 0.5).tolist())
    assert kept == [0, 1, 3, 4]  # the near-duplicate of region 1 goes; the other frame's box stays
    assert sorted(merge_views(boxes, scores, frame, kind, None).tolist()) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def engine(device):
    from vidsearch.dasr.engine import Engine

    # small enough for the CPU: 2x2 tiles of 96 px on a 192x108 frame
    return Engine(Preset(peaks="local_max", nms_iou=None, long_side=96, tiles=(1, 2), view_nms_iou=None,
                         whole_frame=True), device)


def test_tile_regions_are_the_tiles_own_regions_moved_into_the_frame(engine):
    frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(photo("astronaut")).resize((168, 96)))
    r = engine.extract_views(frame[None])
    tiles = [v for v in frame_views(168, 96, engine.preset) if v.level == 2]
    expected = []
    for v in tiles:
        x1, y1, x2, y2 = v.box
        expected += list(engine.extract(frame[None, y1:y2, x1:x2]).boxes + [x1, y1, x1, y1])
    got = r.boxes[r.level == 2]
    assert len(got) == len(expected) > 0
    assert np.allclose(got[np.lexsort(got.T)], np.array(expected)[np.lexsort(np.array(expected).T)], atol=1e-3)
    assert (r.boxes[:, 2] <= 168 + 1e-3).all() and (r.boxes[:, 3] <= 96 + 1e-3).all()


def test_one_whole_frame_region_per_frame_first(engine):
    frames = np.stack([photo("astronaut")[:96, :168], photo("coffee")[:96, :168]])
    r = engine.extract_views(frames)
    whole = np.nonzero(r.kind == KIND_FRAME)[0]
    assert r.frame[whole].tolist() == [0, 1]
    assert np.allclose(r.boxes[whole], [[0, 0, 168, 96]] * 2)
    assert [int(np.nonzero(r.frame == f)[0][0]) for f in (0, 1)] == whole.tolist()  # first of its frame
    assert np.allclose(np.linalg.norm(r.vectors, axis=1), 1, atol=1e-4)


def test_default_sees_frames_from_480_px_as_tiles_enlarged_up_to_2_7x():
    from vidsearch.config import load_preset

    default = load_preset("default")
    assert level_scales(1920, 1080, default) == pytest.approx({1: 512 / 1920, 3: 1280 / 1920})
    # a 960x540 proxy, SD and web video: 3x3 tiles, enlarged; decoded at their own size
    for size, scale in (((960, 540), 1280 / 960), ((640, 360), 2.0), ((480, 270), 1280 / 480)):
        assert level_scales(*size, default)[3] == pytest.approx(scale)
        assert len(frame_views(*size, default)) == 1 + 9
        assert decode_long_side(*size, default) == size[0]
    assert usable_levels(472, 354, default) == [1]  # 2.71x: one view, as before
    # a 24-px crop cut from 640x360 footage is also described at the 48 px it has in the tiles
    assert any(t == pytest.approx(48) for t in crop_sizes((24, 24), [(640, 360)], default))


def test_small_preset_sees_full_hd_at_its_own_resolution_and_smaller_frames_enlarged():
    from vidsearch.config import load_preset

    small, default = load_preset("small"), load_preset("default")
    assert small.fingerprint() != default.fingerprint()  # its libraries are its own
    assert usable_levels(1920, 1080, small) == [1, 3, 5]
    assert level_scales(1920, 1080, small)[5] == pytest.approx(2048 / 1920)  # a 40-px prop is 43 px
    assert len(frame_views(1920, 1080, small)) == 1 + 9 + 25
    assert decode_long_side(1920, 1080, small) == 1920  # never decoded above the source
    assert usable_levels(1280, 720, small) == [1, 3, 5]  # level 5 enlarged 1.6x
    assert usable_levels(640, 360, small) == usable_levels(640, 360, default) == [1, 3]  # 5 would be 3.2x
    # a 40-px crop cut from 1080p: also described at 43 px, the size it has in level-5 tiles
    assert any(t == pytest.approx(40 * 2048 / 1920) for t in crop_sizes((40, 30), [(1920, 1080)], small))


def test_crop_views_at_the_sizes_the_crop_has_in_the_library_and_between():
    hi = MAX_VIEW_FRACTION * TILED.long_side
    # crop, its own sizes (16 px at level 1, 28 px at level 2 for 60 px), the smallest size tried
    for crop, own, floor in (((60, 40), [60 * 512 / 1920, 60 * 896 / 1920], MIN_VIEW_PX),
                             ((600, 400), [160, 280], 80),
                             ((1080, 1920), [], 256),  # as big as the frame: view 0 sees it at its size
                             ((20, 20), [], MIN_VIEW_PX)):  # under MIN_VIEW_PX everywhere
        sizes = crop_sizes(crop, [(1920, 1080)], TILED)
        assert all(any(t == pytest.approx(o) for t in sizes) for o in own)  # its own sizes
        # and the object nearer or farther: every size from half its smallest to the largest view
        # 0 does not see is within one step of a view, no two views nearly the same
        assert sizes == sorted(sizes) and floor <= sizes[0] < max(floor, MIN_VIEW_PX) * SIZE_STEP and sizes[-1] <= hi
        assert hi / sizes[-1] <= SIZE_STEP
        ratios = np.array(sizes[1:]) / np.array(sizes[:-1])
        assert (ratios > DISTINCT).all() and (ratios <= SIZE_STEP * DISTINCT).all()
    # the views between are the same for every crop; only its own sizes add to them
    assert crop_sizes((20, 20), [(1920, 1080)], TILED) == pytest.approx([MIN_VIEW_PX * SIZE_STEP ** n for n in range(9)])


def test_canvas_puts_the_crop_at_its_size_with_its_border_continued():
    crop = np.zeros((20, 40, 3), np.uint8)
    crop[:, :, 0] = 200
    canvas, box = on_canvas(crop, 20)
    x1, y1, x2, y2 = box
    assert (x2 - x1, y2 - y1) == (20, 10)
    assert canvas.shape[0] >= 32 and canvas.shape[1] >= 32  # as far as the network needs
    assert (canvas[..., 0] == 200).all()  # the border pixels go on
    canvas, box = on_canvas(np.zeros((60, 80, 3), np.uint8), 40)
    assert canvas.shape[:2] == (32, 42) and box == (1.0, 1.0, 41.0, 31.0)  # 30 high: one row more each side
    canvas, box = on_canvas(np.zeros((90, 120, 3), np.uint8), 80)
    assert canvas.shape[:2] == (60, 80)  # big enough alone: no surroundings
    canvas, box = on_canvas(crop, 20, context=1.0)
    assert canvas.shape[:2] == (10 + 40, 20 + 40) and box == (20.0, 20.0, 40.0, 30.0)


def test_query_views_of_a_frame_and_of_a_crop(engine):
    img = photo("coffee")
    frame_q = query_views(engine, img, (70, 10, 485, 395), [(600, 400)])
    assert len(frame_q) == 1 + (len(usable_levels(600, 400, engine.preset)) - 1)
    crop = img[10:395, 70:485]
    crop_q = query_views(engine, crop, None, [(1920, 1080)])
    assert len(crop_q) == 1 + len(crop_sizes(crop.shape[:2], [(1920, 1080)], engine.preset))
    assert np.allclose(crop_q[0], engine.describe(crop))  # view 0 is the paper's


def test_regions_are_scored_by_their_best_view():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(500, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    index.add_with_ids(v, region_ids(3, len(v)))
    q = np.stack([v[7], v[42]])
    scores, ids = retrieve(index, q, 0.5)
    best = (v @ q.T).max(1)
    want = np.sort(best[best >= 0.5])[::-1]
    assert np.allclose(scores, want, atol=1e-5) and len(set(ids.tolist())) == len(ids)
    assert {7, 42} <= set((ids & 0xFFFFFFFF).tolist())
    # the threshold comes from the same best-view scores
    assert auto_threshold(index, q)[0] >= auto_threshold(index, q[:1])[0] - 0.05


def test_a_uniform_library_still_shows_its_best_match_and_says_why():
    # One scene everywhere: every region scores 0.5 +- 0.1 against the query, the best 0.6, so
    # the background rule (median + 3 sigma) would sit above every match.
    rng = np.random.default_rng(2)
    q = np.zeros(16, np.float32)
    q[0] = 1
    cos = np.clip(rng.normal(0.5, 0.1, 300), 0.2, 0.6)
    cos[17] = 0.6 + 1e-3
    v = np.zeros((300, 16), np.float32)
    v[:, 0], v[:, 1] = cos, np.sqrt(1 - cos**2)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    index.add_with_ids(v, region_ids(1, len(v)))
    threshold, note = auto_threshold(index, q[None])
    assert threshold == pytest.approx(cos[17], abs=1e-5) and "does not stand out" in note
    assert "--min-score 0.36 --no-verify shows everything scoring at least 60% of the best" in note  # 0.6 x 0.601
    _, ids = retrieve(index, q[None], threshold)
    assert (ids & 0xFFFFFFFF).tolist() == [17]
    # a library where the match stands out: the usual rule, no note
    cos[:] = np.clip(rng.normal(0.1, 0.03, 300), 0, 0.2)
    cos[17] = 0.6
    v[:, 0], v[:, 1] = cos, np.sqrt(1 - cos**2)
    index.reset()
    index.add_with_ids(v, region_ids(1, len(v)))
    threshold, note = auto_threshold(index, q[None])
    assert note is None and 0.2 < threshold < 0.6


@pytest.mark.parametrize("preset, size", [(TILED, (896, 504)), (Preset(tiles=(1, 3), tile_overlap=0.25), (1920, 1080))])
def test_tile_cores_split_the_frame_at_the_middle_of_each_shared_strip(preset, size):
    w, h = size
    tiles = [v for v in frame_views(w, h, preset) if v.level > 1]
    cores = np.array([v.core for v in tiles])
    for v in tiles:  # each core inside its tile
        assert v.box[0] <= v.core[0] < v.core[2] <= v.box[2] and v.box[1] <= v.core[1] < v.core[3] <= v.box[3]
    area = (cores[:, 2] - cores[:, 0]) * (cores[:, 3] - cores[:, 1])
    assert area.sum() == pytest.approx(w * h)  # together the whole frame ...
    for i in range(len(tiles)):  # ... and no two overlap
        for j in range(i + 1, len(tiles)):
            iw = min(cores[i, 2], cores[j, 2]) - max(cores[i, 0], cores[j, 0])
            ih = min(cores[i, 3], cores[j, 3]) - max(cores[i, 1], cores[j, 1])
            assert iw <= 0 or ih <= 0
    left, right = sorted((v for v in tiles if v.box[1] == 0), key=lambda v: v.box[0])[:2]
    assert left.core[2] == right.core[0] == (right.box[0] + left.box[2]) / 2  # the strip's middle
    assert frame_views(w, h, preset)[0].core_fractions() == (0, 0, 1, 1)  # the whole frame: all of it
    fx1, fy1, fx2, fy2 = left.core_fractions()
    assert (fx1, fy1) == (0, 0) and fx2 == pytest.approx((left.core[2] - left.box[0]) / (left.box[2] - left.box[0]))


def test_in_core_keeps_the_peaks_whose_cell_centre_lies_there():
    from vidsearch.dasr.regions import in_core

    pos = torch.tensor([[0, 0], [0, 3], [1, 1], [3, 3], [2, 0]])  # (row, col) on a 4x4 map
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    kept, s = in_core(pos, scores, (4, 4), (0.0, 0.0, 0.5, 0.75))  # columns 0-1, rows 0-2 (centres 0.125 .. 0.625)
    assert kept.tolist() == [[0, 0], [1, 1], [2, 0]] and s.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert in_core(pos, scores, (4, 4), (0.0, 0.0, 1.0, 1.0))[0].tolist() == pos.tolist()


def test_core_tile_peaks_are_a_subset_of_all_and_checked_by_the_preset(engine):
    from vidsearch.dasr.engine import Engine

    # tiles of 6x6 cells (192 px), every cell above the mean a peak, so some lie in shared strips
    frame = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(photo("astronaut")).resize((336, 192)))
    preset = engine.preset.replace(long_side=192, peaks="above_mean")
    every_engine = Engine(preset, engine.device, backbone=engine.backbone)
    core = Engine(preset.replace(tile_peaks="core"), engine.device, backbone=engine.backbone)
    every, cored = every_engine.extract_views(frame[None]), core.extract_views(frame[None])
    # no NMS here: each peak's box is its own, so the core's regions are some of all the regions
    a, c = every.boxes[every.level == 2], cored.boxes[cored.level == 2]
    assert 0 < len(c) < len(a)
    assert all(np.abs(a - box).max(1).min() < 1e-3 for box in c)
    assert core.counts["peaks"] < every_engine.counts["peaks"]
    assert np.allclose(cored.boxes[cored.level == 1], every.boxes[every.level == 1])  # the whole frame: all peaks
    with pytest.raises(InputError, match="tile_peaks"):
        Preset(tile_peaks="edge")
    assert Preset(tile_peaks="all").fingerprint() == Preset().fingerprint() != Preset(tile_peaks="core").fingerprint()
