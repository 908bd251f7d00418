"""The MWP engine: hand-computed values, conservation, and the batched engine vs. the reference."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from vidsearch.backbones import load_backbone
from vidsearch.dasr.excitation import Rules, Tape
from vidsearch.dasr.graph import build_graph
from vidsearch.dasr.reference import reference_maps
from vidsearch.dasr.regions import find_peaks, make_seeds, maps_to_boxes

from .helpers import photo_batch


class Tiny(nn.Module):
    """conv(1x2) -> relu -> [conv(1x1) + skip] -> relu -> maxpool(1x2), on a 1x3 image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, (1, 2), bias=True)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 1, bias=False)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d((1, 2))
        with torch.no_grad():
            self.conv1.weight[:] = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).view(2, 1, 1, 2)
            self.conv1.bias[:] = torch.tensor([0.5, 0.0])
            self.conv2.weight[:] = torch.tensor([[1.0, -2.0], [0.5, 1.0]]).view(2, 2, 1, 1)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        return self.pool(self.relu2(self.conv2(a) + a))


def tiny_expected(x, seed, residual, maxpool):
    """MWP by hand, position by position, straight from the definitions."""
    w1 = [[1.0, 2.0], [3.0, -1.0]]
    b1 = [0.5, 0.0]
    w2 = [[1.0, -2.0], [0.5, 1.0]]
    a0 = [v - min(x) for v in x]  # the image is signed: shifted to be non-negative
    a1 = [[max(0.0, w1[c][0] * x[p] + w1[c][1] * x[p + 1] + b1[c]) for p in range(2)] for c in range(2)]
    pre = [[sum(w2[c][d] * a1[d][p] for d in range(2)) + a1[c][p] for p in range(2)] for c in range(2)]
    b2 = [[max(0.0, v) for v in row] for row in pre]
    # pool: P at the pooled output -> the two pooled positions
    p2 = [[0.0, 0.0], [0.0, 0.0]]
    for c in range(2):
        if maxpool == "sum":
            z = b2[c][0] + b2[c][1]
            for p in range(2):
                p2[c][p] = seed[c] * b2[c][p] / z if z > 0 else 0.0
        else:
            p2[c][0 if b2[c][0] >= b2[c][1] else 1] = seed[c]
    # junction: relu passes P; add of conv2(a1) and the identity a1
    p1 = [[0.0, 0.0], [0.0, 0.0]]
    for c in range(2):
        for p in range(2):
            conv_part = [max(0.0, w2[c][d]) * a1[d][p] for d in range(2)]
            zc = sum(conv_part)
            if residual == "merged":
                z = zc + a1[c][p]
                if z <= 0:
                    continue
                for d in range(2):
                    p1[d][p] += p2[c][p] * conv_part[d] / z
                p1[c][p] += p2[c][p] * a1[c][p] / z
            else:  # copy
                for d in range(2):
                    p1[d][p] += p2[c][p] * conv_part[d] / zc if zc > 0 else 0.0
                p1[c][p] += p2[c][p]
    # conv1: input a0 (1 channel, 3 positions), output 2 channels x 2 positions
    p0 = [0.0, 0.0, 0.0]
    for c in range(2):
        for p in range(2):
            parts = [max(0.0, w1[c][k]) * a0[p + k] for k in range(2)]
            z = sum(parts)
            if z > 0:
                for k in range(2):
                    p0[p + k] += p1[c][p] * parts[k] / z
    return p0


@pytest.mark.parametrize("residual", ["merged", "copy"])
@pytest.mark.parametrize("maxpool", ["sum", "argmax"])
def test_tiny_network_matches_hand_computed_mwp(residual, maxpool):
    model = Tiny().eval()
    graph = build_graph(model, "pool", "pool")
    xs = [1.0, 3.0, 2.0]
    x = torch.tensor(xs).view(1, 1, 1, 3)
    tape = Tape(graph, x, Rules(residual=residual, maxpool=maxpool))
    peak = tape.values[graph.peak][0]  # (2, 1, 1)
    seed = make_seeds(peak, torch.tensor([[0, 0]]), "activations")
    maps = tape.backprop(0, seed)[0, 0].tolist()
    seed_vals = seed[0, :, 0, 0].tolist()
    expected = tiny_expected(xs, seed_vals, residual, maxpool)
    assert maps == pytest.approx(expected, abs=1e-6)
    if residual == "merged":  # MWP conserves probability where every layer's rule does
        assert sum(maps) == pytest.approx(1.0, abs=1e-6)


def _random_case(name, size, seed=0):
    torch.manual_seed(seed)
    bb = load_backbone(name, "random")
    graph = build_graph(bb.model, bb.peak_layer, bb.feature_layer)
    x = torch.randn(1, 3, *size)
    return graph, x


RULES = [("resnet50", r, m) for r in ("merged", "split", "copy") for m in ("sum", "argmax")] + [
    ("efficientnet_lite0", r, "sum") for r in ("merged", "split", "copy")
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("name,residual,maxpool", RULES)
def test_batched_engine_equals_per_peak_reference(name, residual, maxpool, channels_last, device):
    graph, x = _random_case(name, (64, 96))
    rules = Rules(residual=residual, maxpool=maxpool, channels_last=channels_last)
    tape = Tape(graph.to(device), x.to(device), rules)
    if name == "efficientnet_lite0":  # the fused conv -> act -> conv steps are what is compared
        assert len(tape.fused) >= 10
    peak = tape.values[graph.peak][0]
    pos, _ = find_peaks(peak.mean(0), "above_mean")
    seeds = make_seeds(peak, pos[:4], "activations")
    fast = tape.backprop(0, seeds).cpu()
    seeds = seeds.cpu()
    graph64 = graph.to("cpu", torch.float64)  # the reference: one backward per peak, in float64 on the CPU
    slow = reference_maps(graph64, x.double(), seeds, rules)
    graph.to("cpu", torch.float32)
    assert fast.shape == slow.shape == (seeds.shape[0], 64, 96)
    scale = slow.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(fast / scale, slow / scale, atol=2e-4)
    if residual in ("merged", "split"):
        # Mass at the input equals the seed's mass (1), up to what the image's zero pixel drops.
        assert torch.allclose(fast.sum((1, 2)), torch.ones(fast.shape[0]), atol=1e-3)


def test_batch_of_frames_equals_frames_one_by_one(device):
    graph, _ = _random_case("efficientnet_lite0", (64, 64))
    graph.to(device)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64).to(device)
    rules = Rules()
    tape = Tape(graph, x, rules)
    for b in range(3):
        peak = tape.values[graph.peak][b]
        pos, _ = find_peaks(peak.mean(0), "local_max")
        seeds = make_seeds(peak, pos, "activations")
        alone = Tape(graph, x[b : b + 1], rules).backprop(0, seeds)
        assert torch.allclose(tape.backprop(b, seeds), alone, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_maps_stay_close(dtype, lite0, device):
    # Real weights on a real photo: random-init activations vanish below fp16's range.
    graph = build_graph(lite0.model, lite0.peak_layer, lite0.feature_layer).to(device)
    x = lite0.normalize(photo_batch("coffee", 96)).to(device)
    ref_tape = Tape(graph, x, Rules())
    peak = ref_tape.values[graph.peak][0]
    pos, _ = find_peaks(peak.mean(0), "above_mean")
    mass = 64 * 64 if dtype == "fp16" else 1.0
    ref = ref_tape.backprop(0, make_seeds(peak, pos, "activations"))
    low = Tape(graph, x, Rules(dtype=dtype)).backprop(0, make_seeds(peak, pos, "activations", mass))
    ref = ref / ref.flatten(1).amax(1).view(-1, 1, 1)
    low = low / low.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.isfinite(low).all()
    assert (ref - low).abs().mean() < 0.02


@pytest.mark.parametrize("stop", ["stride4", "stride8"])
def test_early_stop_gives_input_sized_maps(stop):
    graph, x = _random_case("resnet50", (64, 96))
    tape = Tape(graph, x, Rules(stop=stop))
    assert tape.stop_index() > 0
    peak = tape.values[graph.peak][0]
    pos, _ = find_peaks(peak.mean(0), "local_max")
    maps = tape.backprop(0, make_seeds(peak, pos, "activations"))
    assert maps.shape == (pos.shape[0], 64, 96)
    assert (maps >= 0).all() and maps.sum() > 0


def test_uniform_seed_spreads_over_channels():
    x = torch.rand(4, 3, 3)
    seeds = make_seeds(x, torch.tensor([[1, 2]]), "uniform")
    assert torch.allclose(seeds[0, :, 1, 2], torch.full((4,), 0.25))
    assert seeds.sum() == pytest.approx(1.0)
    acts = make_seeds(x, torch.tensor([[1, 2]]), "activations")
    assert torch.allclose(acts[0, :, 1, 2], x[:, 1, 2] / x[:, 1, 2].sum())


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_one_layers_output_equals_the_full_forward_at_that_layer(name):
    # Graph.output lets go of values as it goes (refine matches whole enlarged frames with it)
    graph, x = _random_case(name, (64, 96))
    full = graph.forward(x)
    for layer in (1, graph.peak // 2, graph.feature, graph.peak):
        assert torch.equal(graph.output(x, layer), full[layer])


def test_unsupported_layer_is_a_clear_error():
    from vidsearch.errors import VidsearchError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    with pytest.raises(VidsearchError, match="no rule for"):
        build_graph(model, "3", "3")
    np.testing.assert_equal(len(build_graph(model, "0", "0").ops), 2)


def test_peak_chunks_and_frame_batches_do_not_change_the_regions(lite0, device):
    from vidsearch.config import Preset
    from vidsearch.dasr.engine import Engine

    from .helpers import photo

    import numpy as np
    from PIL import Image

    frames = np.stack([np.asarray(Image.fromarray(photo(n)).resize((192, 128))) for n in ("coffee", "rocket", "chelsea")])
    whole = Engine(Preset(long_side=192, peak_chunk=64), device, backbone=lite0).extract(frames)
    chunked = Engine(Preset(long_side=192, peak_chunk=3), device, backbone=lite0).extract(frames)
    single = [Engine(Preset(long_side=192, peak_chunk=3), device, backbone=lite0).extract(frames[i : i + 1]) for i in range(3)]
    assert np.array_equal(whole.frame, chunked.frame)
    assert np.allclose(whole.boxes, chunked.boxes, atol=1e-3) and np.allclose(whole.vectors, chunked.vectors, atol=1e-5)
    assert np.allclose(np.concatenate([s.boxes for s in single]), whole.boxes, atol=1e-2)
    padded = Engine(Preset(long_side=192, peak_chunk=64), device, backbone=lite0)
    padded.pad_chunks = True  # as on CUDA: the last chunk's peaks padded up to a power of two, then dropped
    again = padded.extract(frames)
    assert np.array_equal(whole.frame, again.frame) and np.allclose(whole.boxes, again.boxes, atol=1e-3)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("residual", ["merged", "copy"])
def test_window_covering_the_frame_equals_the_full_pass(residual, channels_last, device):
    from vidsearch.dasr.excitation import Window

    graph, x = _random_case("efficientnet_lite0", (64, 96))
    tape = Tape(graph.to(device), x.to(device), Rules(residual=residual, channels_last=channels_last))
    peak = tape.values[graph.peak][0]
    pos, _ = find_peaks(peak.mean(0), "above_mean")
    seeds = make_seeds(peak, pos, "activations")
    zeros = torch.zeros(pos.shape[0], dtype=torch.int64, device=device)
    windowed = tape.backprop(0, seeds, window=Window(zeros, zeros, 64, 96, 64))
    assert torch.allclose(windowed, tape.backprop(0, seeds), atol=1e-7, rtol=1e-5)
    graph.to("cpu")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_window_crop_is_each_peaks_slice_of_its_frame(layout, device):
    """Window.crop gives, per peak, exactly the slice of its own frame at every stride, in the
    source's layout, from a frame, from a view of the tape (an offset storage) and from one
    image's batch (crop_each)."""
    from vidsearch.dasr.excitation import Window

    g = torch.Generator().manual_seed(3)
    oy, ox = torch.tensor([0, 32, 64, 0, 96]), torch.tensor([0, 96, 32, 160, 160])
    frames = torch.tensor([1, 0, 2, 2, 1])
    win = Window(oy.to(device), ox.to(device), 64, 32, 160)
    for stride, channels in ((1, 3), (4, 5), (32, 7)):
        full = torch.rand(4, channels, 160 // stride, 192 // stride, generator=g)
        t = full.to(device).contiguous(memory_format=layout)[1:]  # frames 1..3 of a larger tape
        got = win.crop(t, frames.to(device))
        assert got.shape == (5, channels, 64 // stride, 32 // stride)
        assert got.is_contiguous(memory_format=layout)
        for k in range(5):
            y, x = int(oy[k]) // stride, int(ox[k]) // stride
            want = full[int(frames[k]) + 1, :, y : y + 64 // stride, x : x + 32 // stride]
            assert torch.equal(got[k].cpu(), want)
        each = win.crop_each(t[:1].expand(5, -1, -1, -1).contiguous(memory_format=layout) + frames.view(-1, 1, 1, 1).to(device))
        for k in range(5):
            y, x = int(oy[k]) // stride, int(ox[k]) // stride
            assert torch.equal(each[k].cpu(), full[1, :, y : y + 64 // stride, x : x + 32 // stride] + float(frames[k]))


def test_windows_hold_each_peak_and_keep_its_box(lite0, device):
    """Real weights on a real photo (8x12 peak cells), windows of 5x5 cells (160 px): each map is
    zero outside its window, which holds its peak, and its box is close to the full pass's."""
    graph = build_graph(lite0.model, lite0.peak_layer, lite0.feature_layer).to(device)
    x = lite0.normalize(photo_batch("astronaut", 384)).to(device)[..., :256, :384]
    tape = Tape(graph, x, Rules())
    peak = tape.values[graph.peak][0]
    assert peak.shape[-2:] == (8, 12)
    pos, _ = find_peaks(peak.mean(0), "above_mean")
    seeds = make_seeds(peak, pos, "activations")
    win = tape.window(pos, 2)
    assert win is not None and (win.h, win.w) == (160, 160)
    maps = tape.backprop(0, seeds, window=win)
    full = tape.backprop(0, seeds)
    for k in range(pos.shape[0]):
        y0, x0 = int(win.oy[k]), int(win.ox[k])
        inside = torch.zeros(256, 384, dtype=torch.bool, device=maps.device)
        inside[y0 : y0 + 160, x0 : x0 + 160] = True
        assert maps[k][~inside].abs().max() == 0
        assert y0 <= int(pos[k, 0]) * 32 < y0 + 160 and x0 <= int(pos[k, 1]) * 32 < x0 + 160
    boxes, ref = maps_to_boxes(maps), maps_to_boxes(full)
    ious = box_iou(boxes, ref).diagonal()
    assert ious.median() > 0.7
    # no window where it would not line up with every layer's grid, or would hold the whole frame
    assert Tape(graph, x[..., :250, :384], Rules()).window(pos, 2) is None
    assert tape.window(pos, 6) is None
    graph.to("cpu")


def test_fused_steps_and_layouts_give_the_plain_steps_maps(lite0, device):
    """Real weights on a real photo: the fused conv -> act -> conv steps in channels_last give
    the maps of the plain step-by-step pass in NCHW (the fusion switched off by hand)."""
    graph = build_graph(lite0.model, lite0.peak_layer, lite0.feature_layer).to(device)
    x = lite0.normalize(photo_batch("coffee", 128)).to(device)
    plain = Tape(graph, x, Rules())
    plain.fused.clear()
    fast = Tape(graph, x, Rules(channels_last=True))
    assert fast.fused
    peak = plain.values[graph.peak][0]
    pos, _ = find_peaks(peak.mean(0), "above_mean")
    seeds = make_seeds(peak, pos, "activations")
    a, b = plain.backprop(0, seeds), fast.backprop(0, seeds)
    scale = a.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(b / scale, a / scale, atol=1e-5)
    assert torch.allclose(maps_to_boxes(a), maps_to_boxes(b), atol=1.0)


def test_cpu_engines_keep_freed_memory_on_glibc():
    import platform

    from vidsearch.dasr.cpu_memory import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() and keep_freed_memory()  # set once, then a no-op that says so


@pytest.mark.parametrize("window", [0, 2])
def test_peaks_of_several_frames_in_one_pass_equal_each_frame_alone(lite0, device, window):
    """The engine sends the peaks of all frames of a batch through in shared chunks: a pass with
    one frame index per peak gives each frame's maps as that frame's own pass does."""
    graph = build_graph(lite0.model, lite0.peak_layer, lite0.feature_layer).to(device)
    x = torch.cat([lite0.normalize(photo_batch(n, 384))[..., :256, :384] for n in ("astronaut", "coffee")]).to(device)
    tape = Tape(graph, x, Rules())
    peaks = tape.values[graph.peak]
    alone, poss, seeds_alone = [], [], []
    for b in range(2):
        pos, _ = find_peaks(peaks[b].mean(0), "above_mean")
        seeds = make_seeds(peaks[b], pos, "activations")
        alone.append(tape.backprop(b, seeds, window=tape.window(pos, window)))
        poss.append(pos)
        seeds_alone.append(seeds)
    pos = torch.cat(poss)
    frame = torch.repeat_interleave(torch.arange(2, device=pos.device), torch.tensor([len(q) for q in poss], device=pos.device))
    seeds = make_seeds(peaks, pos, "activations", frame=frame)
    assert torch.allclose(seeds, torch.cat(seeds_alone), rtol=1e-6, atol=0)
    win = tape.window(pos, window)
    assert (win is None) == (window == 0)
    together = tape.backprop(frame, seeds, window=win)
    expected = torch.cat(alone)
    scale = expected.flatten(1).amax(1).view(-1, 1, 1)
    assert torch.allclose(together / scale, expected / scale, atol=1e-6)
    graph.to("cpu")


def test_tf32_keeps_the_boxes(lite0, device):
    """CUDA only: the engine runs float32 with PyTorch's default TF32 convolutions; its regions
    stay those of full float32 (boxes within a pixel, descriptors within 1e-2)."""
    if not device.startswith("cuda"):
        pytest.skip("TF32 exists on CUDA only")
    from PIL import Image

    from vidsearch.config import Preset
    from vidsearch.dasr.engine import Engine

    from .helpers import photo

    frames = np.stack([np.asarray(Image.fromarray(photo(n)).resize((384, 256))) for n in ("coffee", "rocket")])
    engine = Engine(Preset(long_side=384), device, backbone=lite0)
    exact = engine.extract(frames)
    torch.backends.cudnn.allow_tf32 = True
    try:
        tf32 = engine.extract(frames)
    finally:
        torch.backends.cudnn.allow_tf32 = False
    assert np.array_equal(exact.frame, tf32.frame)
    assert np.abs(exact.boxes - tf32.boxes).max() < 1.0
    assert np.abs(exact.vectors - tf32.vectors).max() < 1e-2


def test_cover_skips_peaks_on_objects_already_found(lite0, device):
    """Predicted suppression (Preset.cover): fewer peaks go through; what comes out is still
    regions with their own boxes that NMS keeps, the best one per frame as the exact pass's,
    and a batch of frames gives each frame's regions as that frame alone does."""
    from PIL import Image

    from vidsearch.config import Preset
    from vidsearch.dasr.engine import Engine

    from .helpers import photo

    frames = np.stack([np.asarray(Image.fromarray(photo(n)).resize((384, 256))) for n in ("coffee", "rocket", "chelsea")])
    every = Engine(Preset(long_side=384, nms_iou=None), device, backbone=lite0).extract(frames)  # each peak's box
    exact = Engine(Preset(long_side=384), device, backbone=lite0).extract(frames)
    engine = Engine(Preset(long_side=384, cover=0.3), device, backbone=lite0)
    fast = engine.extract(frames)
    assert engine.counts["backpropagated"] < 0.8 * engine.counts["peaks"]
    assert engine.counts["backpropagated"] >= len(fast.frame)
    for f in range(len(frames)):
        mine, ref, all_boxes = (torch.from_numpy(r.boxes[r.frame == f]) for r in (fast, exact, every))
        assert torch.allclose(mine[0], ref[0], atol=1e-3)  # the best peak always goes through and stays
        # every box is one that a peak of this frame gives, and no two overlap as NMS forbids
        assert (box_iou(mine, all_boxes).amax(1) > 0.999).all()
        overlap = box_iou(mine, mine) - torch.eye(len(mine))
        assert (overlap <= 0.3 + 1e-6).all()
        assert box_iou(ref, mine).amax(1).mean() >= 0.9  # what the issue asks of a faster variant
    alone = [Engine(Preset(long_side=384, cover=0.3), device, backbone=lite0).extract(frames[i : i + 1]) for i in range(3)]
    assert np.allclose(np.concatenate([a.boxes for a in alone]), fast.boxes, atol=1e-2)
    padded = Engine(Preset(long_side=384, cover=0.3), device, backbone=lite0)
    padded.pad_chunks = True  # as on CUDA: each round's chunks padded to a power of two, the padding dropped
    again = padded.extract(frames)
    assert np.array_equal(again.frame, fast.frame) and np.allclose(again.boxes, fast.boxes, atol=1e-3)
    assert padded.counts == engine.counts
    # one round as large as a frame's peaks: nothing is left to skip, so it is the exact pass
    whole = Engine(Preset(long_side=384, cover=0.3, cover_round=10_000), device, backbone=lite0)
    same = whole.extract(frames)
    assert whole.counts["backpropagated"] == whole.counts["peaks"]
    assert np.array_equal(same.frame, exact.frame) and np.allclose(same.boxes, exact.boxes, atol=1e-3)
    # rounds of 32 skip fewer peaks than rounds of 8, more than none
    wider = Engine(Preset(long_side=384, cover=0.3, cover_round=32), device, backbone=lite0)
    wider.extract(frames)
    assert engine.counts["backpropagated"] <= wider.counts["backpropagated"] <= whole.counts["backpropagated"]


def test_cell_fractions_of_a_map():
    from vidsearch.dasr.regions import cell_fractions

    maps = torch.zeros(2, 4, 6)
    maps[0, :2, :2] = 4.0  # all of cell (0, 0)
    maps[0, 2:, 4:] = 1.0  # a quarter as strong in cell (1, 2)
    maps[1, 0, 0] = 2.0  # a quarter of cell (0, 0) only: still its largest cell
    cells = cell_fractions(maps, (2, 3))
    assert cells.shape == (2, 2, 3)
    assert cells[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.25]]
    assert cells[1].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_cover_is_checked_and_changes_the_fingerprint_only_when_on():
    from vidsearch.config import Preset
    from vidsearch.errors import InputError

    with pytest.raises(InputError, match="cover must be in"):
        Preset(cover=1.5)
    with pytest.raises(InputError, match="cover_round must be"):
        Preset(cover=0.3, cover_round=-1)
    assert Preset().fingerprint() == "f01e4577b2f98c8a"  # as before cover existed: old libraries match
    assert Preset(cover=0.3).fingerprint() != Preset().fingerprint()  # other regions, other libraries
    assert Preset(cover=0.3, cover_round=32).fingerprint() != Preset(cover=0.3).fingerprint()


def test_safe_inverse_is_one_over_z_where_z_is_positive_else_zero():
    from vidsearch.dasr.excitation import _safe_inverse

    z = torch.tensor([0.0, 1e-30, 1e-20, 4e-20, 0.5, 4.0, -1.0])
    assert torch.equal(_safe_inverse(z), torch.tensor([0.0, 0.0, 0.0, 2.5e19, 2.0, 0.25, 0.0]))
    # fp16: below 4/65504 counts as zero (its inverse would overflow)
    assert torch.equal(_safe_inverse(z.half()), torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 0.25, 0.0]).half())
