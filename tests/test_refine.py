"""Query-guided boxes: a template cut from the query's box finds the object near a rough
region box, at another size, with real weights on real photos."""

import numpy as np
import pytest
from PIL import Image

from vidsearch.config import Preset
from vidsearch.evaluate import iou
from vidsearch import refine
from vidsearch.refine import Template, _best, _pieces, make_template, refine_box, refine_layer
from vidsearch.testsets import collage, object_image, paste


@pytest.fixture(scope="module")
def engine(device):
    from vidsearch.dasr.engine import Engine

    return Engine(Preset(peaks="local_max", nms_iou=None), device)


def scene_with(obj: str, px: int, xy: tuple[int, int], seed: int, size=(640, 360)) -> tuple[np.ndarray, tuple]:
    frame = collage(["grass", "brick", "camera", "moon"], size, seed=seed).copy()
    img, alpha = object_image(obj)
    s = px / max(img.shape[:2])
    w, h = int(round(img.shape[1] * s)), int(round(img.shape[0] * s))
    paste(frame, np.asarray(Image.fromarray(img).resize((w, h))), np.asarray(Image.fromarray(alpha).resize((w, h))), *xy)
    return frame, (xy[0], xy[1], xy[0] + w, xy[1] + h)


def test_the_layer_is_finer_than_the_descriptors(engine):
    layer = refine_layer(engine)
    assert layer < engine.graph.feature and engine.graph.ops[layer].nonneg


@pytest.mark.parametrize("obj,query_px,px,xy", [("cup", 120, 80, (400, 200)), ("rocket", 100, 140, (90, 120)),
                                                 ("logo", 90, 60, (300, 60))])
def test_a_rough_region_becomes_the_objects_box(engine, obj, query_px, px, xy):
    layer = refine_layer(engine)
    query, qbox = scene_with(obj, query_px, (100, 100), seed=1)
    frame, truth = scene_with(obj, px, xy, seed=2)
    # a region as DASR often returns it: the object and much around it, off-centre
    w, h = truth[2] - truth[0], truth[3] - truth[1]
    rough = (truth[0] - 0.9 * w, truth[1] - 0.3 * h, truth[2] + 0.4 * w, truth[3] + 0.8 * h)
    assert iou(rough, truth) < 0.35
    for template in (make_template(engine, layer, query, qbox),  # a frame and its box
                     make_template(engine, layer, query[qbox[1]:qbox[3], qbox[0]:qbox[2]])):  # a crop alone
        out = refine_box(engine, layer, frame, [template], rough)
        assert iou(out.box, truth) > 0.6, (out, truth)
        assert 0 < out.score <= 1


def lookalike_scene(engine):
    """A query, and a frame whose hit region lies on a half-hidden copy of the object while the
    whole object is elsewhere: (template, frame, region, truth)."""
    layer = refine_layer(engine)
    query, qbox = scene_with("cup", 120, (100, 100), seed=1)
    frame, truth = scene_with("cup", 80, (460, 220), seed=2)
    img, alpha = object_image("cup")
    w, h = truth[2] - truth[0], truth[3] - truth[1]
    alpha = np.asarray(Image.fromarray(alpha).resize((w, h))).copy()
    alpha[:, w // 2:] = 0  # its right half hidden
    paste(frame, np.asarray(Image.fromarray(img).resize((w, h))), alpha, 60, 40)
    region = (40.0, 25.0, 60.0 + w + 20, 40.0 + h + 15)  # around the lookalike
    return make_template(engine, layer, query, qbox), frame, region, truth


def test_a_box_leaves_a_region_held_by_a_lookalike_for_the_object_elsewhere(engine):
    """The hit region lies on a half-hidden copy of the object (another walker, another player);
    the whole object elsewhere in the frame matches better, at the size found on the region."""
    layer = refine_layer(engine)
    template, frame, region, truth = lookalike_scene(engine)
    near = refine_box(engine, layer, frame, [template], region, anywhere=False)
    assert iou(near.box, truth) == 0 and not near.moved
    out = refine_box(engine, layer, frame, [template], region)
    assert out.moved and iou(out.box, truth) > 0.6, (out, truth)
    assert out.score == near.score  # the region's match still ranks the hit
    # find defers the whole-frame pass until verification: the same box, in two steps
    first = refine.refine_near(engine, layer, frame, [template], region)
    later = refine.move_anywhere(engine, layer, frame, [template], first)
    assert later == out and later.template == 0


def test_colour_tells_the_object_from_a_copy_in_other_colours(engine, monkeypatch):
    """Two copies of the object, one with its colours turned (red and blue swapped): the hit
    region lies on that one, and the box moves to the copy in the query's colours."""
    layer = refine_layer(engine)
    query, qbox = scene_with("motorcycle", 120, (100, 100), seed=1)
    frame = collage(["grass", "brick", "camera", "moon"], (640, 360), seed=2).copy()
    img, alpha = object_image("motorcycle")
    s = 100 / max(img.shape[:2])
    w, h = int(round(img.shape[1] * s)), int(round(img.shape[0] * s))
    img = np.asarray(Image.fromarray(img).resize((w, h)))
    alpha = np.asarray(Image.fromarray(alpha).resize((w, h)))
    paste(frame, img[:, :, ::-1].copy(), alpha, 60, 40)  # the copy in other colours
    paste(frame, img, alpha, 460, 220)
    truth, region = (460, 220, 460 + w, 220 + h), (40.0, 25.0, 80.0 + w, 55.0 + h)
    template = make_template(engine, layer, query, qbox)
    out = refine_box(engine, layer, frame, [template], region)
    assert out.moved and iou(out.box, truth) > 0.6, (out, truth)
    # the backbone's cells alone see two of the same object: the box stays on the region's
    monkeypatch.setattr(refine, "COLOUR", 0.0)
    grey = refine_box(engine, layer, frame, [make_template(engine, layer, query, qbox)], region)
    assert iou(grey.box, truth) < 0.1, grey


@pytest.mark.parametrize("w,h,scale,keep", [(1920, 1080, 2.4, 150.0), (3840, 2160, 1.0, 40.0), (640, 360, 1.2, 147.0),
                                            (300, 200, 3.0, 20.0)])
def test_pieces_cover_the_frame_and_hold_every_placement(monkeypatch, w, h, scale, keep):
    monkeypatch.setattr(refine, "PIECE_PIXELS", 60_000)
    pieces = _pieces(w, h, scale, keep)
    side = max(np.sqrt(60_000) / scale, 2 * keep)
    for axis, n in ((0, w), (1, h)):
        spans = sorted({(p[axis], p[axis + 2]) for p in pieces})
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(0 <= a < b <= n and b - a <= side + 2 for a, b in spans)
        # neighbours overlap by `keep`: whatever fits in `keep` lies whole in one piece
        assert all(b1 - a2 >= keep for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert len(pieces) == len({p[0] for p in pieces}) * len({p[1] for p in pieces})


def test_the_whole_frame_seen_in_pieces_finds_what_it_finds_at_once(engine, monkeypatch):
    layer = refine_layer(engine)
    template, frame, region, truth = lookalike_scene(engine)
    whole = refine_box(engine, layer, frame, [template], region)
    original, windows = refine._features, []

    def features(engine, layer, image, window, scale):
        windows.append(window)
        return original(engine, layer, image, window, scale)

    monkeypatch.setattr(refine, "_features", features)
    monkeypatch.setattr(refine, "PIECE_PIXELS", 60_000)  # the 640x360 frame at its scale: several pieces
    pieced = refine_box(engine, layer, frame, [template], region)
    near = len(refine.ZOOMS) + 2  # the search around the region: every zoom, then half steps
    h, w = frame.shape[:2]
    assert len(windows) > near + 2 and all((x2 - x1) * (y2 - y1) < w * h for x1, y1, x2, y2 in windows[near:])
    # the same place, to within the cell grid each piece lays down from its own corner
    assert pieced.moved and iou(pieced.box, whole.box) > 0.6 and iou(pieced.box, truth) > 0.6, (pieced, whole)


def test_a_box_cut_by_the_frame_keeps_the_objects_whole_size():
    # the whole-frame pass takes its size from here: a box cut at the edge must not shrink it
    import torch

    t = Template(torch.ones(1, 4, 2, 2) / 4, (40.0, 20.0), 0.5, (0.0, 0.0))  # 0.5 network px per query px
    ncc = torch.zeros(5, 5)
    ncc[0, 0] = 1.0
    found = _best((ncc, ncc), t, (-10.0, -10.0), 0.5, 0.5, 16.0, (100, 200), 1.0)  # the object 10 px past the top left
    assert found.box == (0.0, 0.0, 30.0, 10.0) and found.side == 40.0 and found.score == 1.0


def test_chroma_is_cielab_a_b_per_cell():
    import torch

    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, :4] = 128  # grey: no chroma
    image[:, 4:] = (255, 0, 0)  # sRGB red: a* 80.1, b* 67.2
    chroma = refine._chroma(image, (1, 2), torch.device("cpu"))
    assert chroma.shape == (1, 2, 1, 2)
    assert torch.allclose(chroma[0, :, 0, 0], torch.zeros(2), atol=1e-3)
    assert torch.allclose(chroma[0, :, 0, 1], torch.tensor([0.801, 0.672]), atol=2e-3)


def test_colour_picks_the_place_and_leaves_the_score_to_the_cells():
    import torch

    f = torch.ones(1, 4, 1, 3)  # three places the cells cannot tell apart
    red, blue = torch.tensor([0.8, 0.67]), torch.tensor([0.8, -1.08])
    chroma = torch.stack([blue, blue, red], -1)[None, :, None, :]  # (1, 2, 1, 3)
    weight = 2.0  # COLOUR times the template's mean cell norm
    cells = torch.ones(1, 4, 1, 1) / 2  # unit norm
    t = Template(cells, (10.0, 10.0), 1.0, (0.0, 0.0), weight * red.view(1, 2, 1, 1) / 2, weight)
    alone, fit = refine._ncc(f, chroma, t)
    assert torch.allclose(alone, torch.ones(1, 3))  # the score: the cells' correlation, colour aside
    assert int(fit.argmax()) == 2 and abs(float(fit[0, 2]) - 1) < 1e-6 and float(fit[0, 0]) < 0.9
    found = _best((alone, fit), t, (0.0, 0.0), 1.0, 1.0, 16.0, (100, 100), 1.0)
    assert found.score == pytest.approx(1.0) and found.box[0] == pytest.approx(32.0)
    grey = Template(cells, (10.0, 10.0), 1.0, (0.0, 0.0), None, 0.0)  # COLOUR 0
    assert all(torch.equal(m, alone) for m in refine._ncc(f, chroma, grey))


class FramesGrabber:
    """The frames of a made-up video by index, handed out in time order as FrameGrabber does."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.missing: set[str] = set()

    def grab(self, wanted):
        for k in sorted(range(len(wanted)), key=lambda k: wanted[k][1]):
            yield k, self.frames[wanted[k][2]]


def refine_segment(engine, query: np.ndarray, qbox, frames: list[np.ndarray], hits: list) -> None:
    """refine_hits on one segment of `hits` on the made-up video of `frames`, one a second."""
    from vidsearch.library import VideoRow
    from vidsearch.queries import Query
    from vidsearch.rerank import Matcher, refine_hits
    from vidsearch.search import Segment

    n = len(frames)
    video = VideoRow(1, "v.mp4", "k", 1, 0.0, 640, 360, "1", float(n), n, "h264", 0, True, None, n, 2 * n, "", "done",
                     None)
    matcher = Matcher(engine, [Query("q.png", tuple(float(v) for v in qbox), query)])
    matcher.grabber = FramesGrabber(frames)
    assert refine_hits(engine, [], [Segment(video, 0.0, float(n), hits)], limit=10, matcher=matcher) == []


@pytest.mark.parametrize("wrong,followed", [(1, None), (0, 2)])
def test_a_hit_whose_region_lies_elsewhere_takes_its_box_from_the_hits_beside_it(engine, wrong, followed):
    """Three samples of a moving cup. One hit's region is a small box on the grass, too small for
    any zoom tried near it to reach the cup's size; the others' regions are rough boxes around the
    cup (or, for a followed hit, the box its match found). The object's size jumps from both its
    neighbours', which matched better, so that frame is matched again near their boxes at about
    their size, and its box finds the cup, between two hits or before them."""
    from vidsearch.follow import FOLLOWED
    from vidsearch.search import Hit

    layer = refine_layer(engine)
    query, qbox = scene_with("cup", 120, (100, 100), seed=1)
    scenes = [scene_with("cup", 100, (300 + 25 * k, 150 + 10 * k), seed=2) for k in range(3)]
    frames, truths = [f for f, _ in scenes], [t for _, t in scenes]
    template = make_template(engine, layer, query, qbox)
    elsewhere = [20.0, 300.0, 40.0, 320.0]
    # the region alone cannot give the cup's box (ZOOMS reach about 2.4x a 20-px region)
    assert iou(refine_box(engine, layer, frames[wrong], [template], elsewhere).box, truths[wrong]) < 0.3

    def region(k):
        if k == wrong:
            return list(elsewhere)
        if k == followed:
            return list(truths[k])
        x1, y1, x2, y2 = truths[k]
        return [x1 - 30.0, y1 - 10.0, x2 + 20.0, y2 + 40.0]  # a rough region around the cup

    hits = [Hit(float(k), k, region(k), 0.5 - k / 10, FOLLOWED if k == followed else "region", refined=k == followed)
            for k in range(3)]
    refine_segment(engine, query, qbox, frames, hits)
    if followed is not None:
        assert hits[followed].box == list(truths[followed])  # a followed hit keeps the box its match found
    for k in range(3):
        assert hits[k].refined and iou(hits[k].box, truths[k]) > 0.6, (k, hits[k].box, truths[k])


def test_two_wrong_boxes_side_by_side_are_set_right_from_the_end_of_the_run(engine):
    """Four samples of a moving cup; the last two hits' regions are small boxes on the grass, so
    their boxes come out the same wrong size and agree with each other. Frame 2 differs from
    frame 1, which matched better, and is matched again near frame 1's box; then frame 3, whose
    neighbour frame 2 is now right, is matched again near frame 2's (a second round)."""
    from vidsearch.refine import same_size
    from vidsearch.search import Hit

    layer = refine_layer(engine)
    query, qbox = scene_with("cup", 120, (100, 100), seed=1)
    scenes = [scene_with("cup", 100, (260 + 25 * k, 150 + 10 * k), seed=2) for k in range(4)]
    frames, truths = [f for f, _ in scenes], [t for _, t in scenes]
    template = make_template(engine, layer, query, qbox)
    grass = [[20.0, 300.0, 40.0, 320.0], [24.0, 296.0, 44.0, 316.0]]
    alone = [refine_box(engine, layer, frames[2 + i], [template], grass[i]) for i in range(2)]
    # alone, both are wrong and agree on their size: neither differs from its other neighbour
    assert all(iou(a.box, truths[2 + i]) < 0.3 for i, a in enumerate(alone))
    assert same_size(alone[0].side, alone[1].box)

    def region(k):
        if k >= 2:
            return list(grass[k - 2])
        x1, y1, x2, y2 = truths[k]
        return [x1 - 30.0, y1 - 10.0, x2 + 20.0, y2 + 40.0]  # a rough region around the cup

    hits = [Hit(float(k), k, region(k), 0.5 - k / 10, "region") for k in range(4)]
    refine_segment(engine, query, qbox, frames, hits)
    for k in range(4):
        assert hits[k].refined and iou(hits[k].box, truths[k]) > 0.6, (k, hits[k].box, truths[k])
