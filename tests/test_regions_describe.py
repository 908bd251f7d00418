"""Peaks, ellipse boxes, NMS, box pooling, whitening, and the real Lite0 weights."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidsearch.dasr.describe import l2n, pool_boxes
from vidsearch.dasr.whitening import Whitening
from vidsearch.dasr.regions import find_peaks, maps_to_boxes, nms

from .helpers import photo_batch


def test_rectangle_map_gives_the_second_moment_box():
    m = torch.zeros(1, 40, 60)
    m[0, 10:20, 5:35] = 1.0  # rows 10..19, cols 5..34
    box = maps_to_boxes(m, "tau", 0.1)[0].tolist()
    # pixel centres +0.5; a discrete uniform run of n pixels has variance (n^2 - 1) / 12
    sx, sy = math.sqrt((30**2 - 1) / 12), math.sqrt((10**2 - 1) / 12)
    assert box == pytest.approx([20 - 2 * sx, 15 - 2 * sy, 20 + 2 * sx, 15 + 2 * sy], abs=1e-4)


def test_gaussian_blob_box_is_centred_and_scales_with_sigma():
    ys, xs = torch.meshgrid(torch.arange(100.0), torch.arange(100.0), indexing="ij")
    small = torch.exp(-((xs - 30) ** 2 + (ys - 60) ** 2) / (2 * 4.0**2))
    large = torch.exp(-((xs - 30) ** 2 + (ys - 60) ** 2) / (2 * 8.0**2))
    b = maps_to_boxes(torch.stack([small, large]), "tau", 0.1)
    centres = (b[:, :2] + b[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([[30.5, 60.5]] * 2), atol=0.05)
    widths = b[:, 2] - b[:, 0]
    assert widths[1] / widths[0] == pytest.approx(2.0, rel=0.05)


def test_percentile_threshold_keeps_the_top_pixels():
    m = torch.zeros(1, 10, 10)
    m[0, 0, :5] = torch.arange(1.0, 6.0)  # the 5 highest of 100 pixels = the 95th percentile up
    box = maps_to_boxes(m, "percentile", percentile=95.0)[0]
    assert box[1] == pytest.approx(0.0) and box[3] == pytest.approx(1.0)  # one-pixel-high region
    assert box[0] == 0 and box[2] == pytest.approx(2.5 + 2 * math.sqrt(2), abs=1e-5)  # x: pixels 0..4


def test_boxes_are_clipped_to_the_map():
    m = torch.zeros(1, 20, 20)
    m[0, 0:3, 0:20] = 1
    box = maps_to_boxes(m)[0]
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 20 and box[3] <= 20


def test_peaks_local_max_and_above_mean():
    m = torch.zeros(5, 6)
    m[1, 1], m[3, 4], m[0, 5] = 5.0, 3.0, 2.0
    pos, scores = find_peaks(m, "local_max")
    assert pos[:3].tolist() == [[1, 1], [3, 4], [0, 5]] and scores[0] == 5.0
    pos, _ = find_peaks(m, "local_max_official")  # border peak dropped; >= mean kept
    assert pos.tolist() == [[1, 1], [3, 4]]
    pos, _ = find_peaks(m, "above_mean")
    assert sorted(map(tuple, pos.tolist())) == [(0, 5), (1, 1), (3, 4)]
    pos, _ = find_peaks(m, "above_mean", max_peaks=1)
    assert pos.tolist() == [[1, 1]]


def test_nms_keeps_the_best_of_overlapping_boxes_per_frame():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.5])
    frames = torch.tensor([0, 0, 0, 1])
    keep = sorted(nms(boxes, scores, frames, 0.3).tolist())
    assert keep == [0, 2, 3]  # box 1 overlaps box 0 (IoU 0.68); frame 1's box stands alone
    assert len(nms(boxes, scores, frames, None)) == 4


def test_avg_and_max_pooling_inside_a_box():
    feats = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    box = torch.tensor([[32.0, 0.0, 96.0, 64.0]])  # image 128x128, stride 32: cells x 1..2, y 0..1
    frame = torch.zeros(1, dtype=torch.int64)
    avg = pool_boxes(feats, box, frame, (128, 128), "avg")[0]
    mx = pool_boxes(feats, box, frame, (128, 128), "max")[0]
    cells = feats[0, :, 0:2, 1:3]
    assert torch.allclose(avg, cells.mean((1, 2)))
    assert torch.allclose(mx, cells.amax((1, 2)))


def test_whitening_round_trip():
    rng = np.random.default_rng(0)
    raw = l2n(rng.normal(size=(3000, 16)) * np.linspace(0.1, 3, 16) + 0.5)
    w = Whitening.fit(raw, shrink=0.0)
    centred = (raw - w.mean) @ w.proj.T
    assert np.allclose(np.cov(centred.T), np.eye(16), atol=1e-6)
    out = w.apply(raw)
    assert out.shape == (3000, 16) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    w8 = Whitening.fit(raw, dims=8)
    assert w8.apply(raw).shape == (3000, 8)
    again = Whitening.from_arrays(w.to_arrays())
    assert np.allclose(again.apply(raw), out)


@pytest.mark.parametrize("name,classes", [("chelsea", range(281, 286)), ("coffee", (967, 968, 504))])
def test_real_lite0_weights_classify_photos(lite0, name, classes):
    x = F.interpolate(photo_batch(name, 256), size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = int(lite0.model(lite0.normalize(x)).argmax())
    assert top in classes
