"""One call from frames to regions: forward + tape, peaks, batched MWP, boxes, NMS, pooling."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import Backbone, load_backbone
from ..config import Preset
from .describe import l2n, pool_boxes
from .excitation import Rules, Tape
from .graph import Graph, build_graph
from .regions import find_peaks, make_seeds, maps_to_boxes, nms


@dataclass
class Regions:
    """Regions of a batch of frames; boxes in the pixels of the frames as given."""

    frame: np.ndarray  # (N,) index of the frame in the batch
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    scores: np.ndarray  # (N,) X̄ at the seed
    vectors: np.ndarray  # (N, D) L2-normalised raw descriptors (not whitened)
    extra: np.ndarray | None = None  # the same regions pooled the other way, when asked for


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import InputError

        raise InputError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    return torch.device(device)


def target_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side = long_side, aspect kept, at least 32 pixels each way."""
    s = long_side / max(height, width)
    return max(32, round(height * s)), max(32, round(width * s))


def to_batch(frames, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) array/tensor or list of same-size arrays -> float (B, 3, H, W) in [0, 1]."""
    if isinstance(frames, list):
        frames = np.stack(frames)
    t = torch.from_numpy(np.array(frames, copy=True)).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


class Engine:
    """DASR / DASR* region extraction with one backbone and one preset."""

    def __init__(self, preset: Preset, device: str | torch.device = "auto", weights: str | None = None,
                 backbone: Backbone | None = None) -> None:
        self.preset = preset
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.backbone = backbone or load_backbone(preset.backbone, weights)
        self.graph: Graph = build_graph(
            self.backbone.model,
            preset.peak_layer or self.backbone.peak_layer,
            preset.feature_layer or self.backbone.feature_layer,
        ).to(self.device)
        self.rules = Rules(preset.residual, preset.maxpool, preset.stop, preset.dtype)
        self.timings: dict[str, float] = defaultdict(float)
        self.dim = int(self.feature_dim())

    def feature_dim(self) -> int:
        op = self.graph.ops[self.graph.feature]
        while op.weight is None:  # act / pool / add keep the channel count of their input
            op = self.graph.ops[op.inputs[0]]
        return op.weight.shape[0]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _tick(self, stage: str, start: float) -> float:
        self._sync()
        now = time.perf_counter()
        self.timings[stage] += now - start
        return now

    def prepare(self, frames) -> tuple[torch.Tensor, tuple[int, int]]:
        """Frames -> normalised network input at the preset's long side, and the frames' (H, W)."""
        x = to_batch(frames, self.device)
        h0, w0 = x.shape[-2:]
        h, w = target_size(h0, w0, self.preset.long_side)
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone.normalize(x), (h0, w0)

    @torch.no_grad()
    def extract(self, frames, extra_pooling: str | None = None) -> Regions:
        """Frames (B, H, W, 3) uint8, all one size -> their regions (and, with extra_pooling,
        the same regions pooled a second way, for comparing DASR with DASR-m)."""
        p = self.preset
        t = time.perf_counter()
        x, (h0, w0) = self.prepare(frames)
        tape = Tape(self.graph, x, self.rules)
        t = self._tick("forward", t)
        peak_map = tape.values[self.graph.peak]
        mean_map = peak_map.mean(1)
        size = x.shape[-2:]
        mass = float(size[0] * size[1]) if p.dtype == "fp16" else 1.0
        all_boxes, all_scores, all_frames = [], [], []
        for b in range(x.shape[0]):
            pos, scores = find_peaks(mean_map[b], p.peaks, p.max_peaks)
            for c in range(0, pos.shape[0], p.peak_chunk):
                chunk = pos[c : c + p.peak_chunk]
                seeds = make_seeds(peak_map[b], chunk, p.seed, mass)
                t0 = time.perf_counter()
                maps = tape.backprop(b, seeds)
                t1 = self._tick("backprop", t0)
                all_boxes.append(maps_to_boxes(maps, p.threshold, p.tau, p.percentile))
                self._tick("boxes", t1)
            all_scores.append(scores)
            all_frames.append(torch.full((pos.shape[0],), b, device=self.device, dtype=torch.int64))
        t = time.perf_counter()
        boxes = torch.cat(all_boxes)
        scores = torch.cat(all_scores).float()
        frame = torch.cat(all_frames)
        keep = nms(boxes, scores, frame, p.nms_iou)
        # Regions ordered by frame, then by score.
        keep = keep[torch.argsort(frame[keep] * 1e6 - scores[keep].double(), stable=True)] if keep.numel() else keep
        boxes, scores, frame = boxes[keep], scores[keep], frame[keep]
        t = self._tick("boxes", t)
        feats = tape.values[self.graph.feature]
        vectors = l2n(pool_boxes(feats.float(), boxes, frame, tuple(size), p.pooling))
        extra = l2n(pool_boxes(feats.float(), boxes, frame, tuple(size), extra_pooling)).cpu().numpy() \
            if extra_pooling else None
        t = self._tick("pooling", t)
        sx, sy = w0 / size[1], h0 / size[0]
        scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)
        return Regions(frame.cpu().numpy(), (boxes * scale).cpu().numpy().astype(np.float32),
                       scores.cpu().numpy().astype(np.float32), vectors.cpu().numpy().astype(np.float32),
                       extra)

    @torch.no_grad()
    def describe(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """One image (H, W, 3) uint8 and a box x1, y1, x2, y2 in its pixels (None = whole image)
        -> the L2-normalised raw descriptor pooled inside the box, as for library regions."""
        x, (h0, w0) = self.prepare(image[None])
        values = self.graph.forward(x)
        feats = values[self.graph.feature]
        h, w = x.shape[-2:]
        if box is None:
            box = (0.0, 0.0, float(w0), float(h0))
        sx, sy = w / w0, h / h0
        b = torch.tensor([[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]], device=self.device)
        vec = l2n(pool_boxes(feats.float(), b, torch.zeros(1, dtype=torch.int64, device=self.device),
                             (h, w), self.preset.pooling))
        return vec[0].cpu().numpy().astype(np.float32)
