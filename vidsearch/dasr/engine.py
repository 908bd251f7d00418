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
from .cpu_memory import keep_freed_memory
from .describe import l2n, pool_boxes
from .excitation import Rules, Tape
from .graph import Graph, build_graph
from .regions import cell_fractions, find_peaks, in_core, make_seeds, maps_to_boxes, nms
from .views import KIND_FRAME, frame_views, merge_views


CPU_PEAK_CHUNK, GPU_PEAK_CHUNK = 16, 64  # peaks per back-propagation batch (Preset.peak_chunk = 0)
# Peaks per frame per round of predicted suppression (Preset.cover; Preset.cover_round = 0):
# smaller rounds skip more peaks (each round's peaks cannot skip one another), larger ones fill
# the batches better and wait on the device less often.
COVER_ROUND = 8


@dataclass
class Regions:
    """Regions of a batch of frames; boxes in the pixels of the frames as given."""

    frame: np.ndarray  # (N,) index of the frame in the batch
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2
    scores: np.ndarray  # (N,) X̄ at the seed
    vectors: np.ndarray  # (N, D) L2-normalised raw descriptors (not whitened)
    extra: np.ndarray | None = None  # the same regions pooled the other way, when asked for
    level: np.ndarray | None = None  # (N,) int8 view level each region was found at (1 = whole frame)
    kind: np.ndarray | None = None  # (N,) int8 KIND_REGION or KIND_FRAME (the whole-frame region)

    def __post_init__(self) -> None:
        n = len(self.frame)
        if self.level is None:
            self.level = np.ones(n, dtype=np.int8)
        if self.kind is None:
            self.kind = np.zeros(n, dtype=np.int8)

    def take(self, idx: np.ndarray) -> "Regions":
        return Regions(self.frame[idx], self.boxes[idx], self.scores[idx], self.vectors[idx],
                       None if self.extra is None else self.extra[idx], self.level[idx], self.kind[idx])

    @staticmethod
    def concat(parts: list["Regions"]) -> "Regions":
        extra = None if any(p.extra is None for p in parts) else np.concatenate([p.extra for p in parts])
        return Regions(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("frame", "boxes", "scores", "vectors")),
                       extra, np.concatenate([p.level for p in parts]), np.concatenate([p.kind for p in parts]))


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


def _bucket(k: int, most: int) -> int:
    """k rounded up to a power of two (at least 8), at most `most`."""
    return min(most, max(8, 1 << (k - 1).bit_length()))


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
        on_cpu = self.device.type == "cpu"
        self.rules = Rules(preset.residual, preset.maxpool, preset.stop, preset.dtype, channels_last=on_cpu)
        self.peak_chunk = preset.peak_chunk or (CPU_PEAK_CHUNK if on_cpu else GPU_PEAK_CHUNK)
        self.cover_round = preset.cover_round or COVER_ROUND
        self.pad_chunks = not on_cpu  # back-propagation batches padded to a few sizes (see extract)
        if on_cpu:
            keep_freed_memory()
        self.timings: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)  # peaks found / back-propagated (benches)
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

    def prepare(self, frames, long_side: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Frames -> normalised network input at `long_side` (default: the preset's; 0: as they
        are), and the frames' (H, W)."""
        x = to_batch(frames, self.device)
        h0, w0 = x.shape[-2:]
        long_side = self.preset.long_side if long_side is None else long_side
        h, w = target_size(h0, w0, long_side) if long_side else (max(32, h0), max(32, w0))
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return self.backbone.normalize(x), (h0, w0)

    @torch.no_grad()
    def extract_views(self, frames, extra_pooling: str | None = None) -> Regions:
        """Frames (B, H, W, 3) uint8, all one size -> the regions of all their views
        (views.py), boxes in the frames' pixels, merged by NMS across views, each with its level;
        plus one whole-frame region per frame where the preset asks for it."""
        frames = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
        b, h, w = frames.shape[:3]
        p = self.preset
        views = frame_views(w, h, p)
        parts = [self.extract(frames, extra_pooling, whole_frame=p.whole_frame)]
        for level in sorted({v.level for v in views} - {1}):
            tiles = [v for v in views if v.level == level]
            crops = [f[y1:y2, x1:x2] for f in frames for x1, y1, x2, y2 in (v.box for v in tiles)]
            # at most as many tiles per pass as frames in the batch: the tape's memory grows with
            # the images in a pass, and the caller's batch size is what it can afford
            cores = np.array([t.core_fractions() for t in tiles] * len(frames), dtype=np.float32) \
                if p.tile_peaks == "core" else None
            for start in range(0, len(crops), b):
                r = self.extract(np.stack(crops[start : start + b]), extra_pooling,
                                 cores=None if cores is None else cores[start : start + b])
                crop = r.frame + start
                offset = np.array([tiles[i % len(tiles)].box[:2] * 2 for i in crop], dtype=np.float32).reshape(-1, 4)
                r.boxes = r.boxes + offset
                r.frame = crop // len(tiles)
                r.level = np.full(len(r.frame), level, dtype=np.int8)
                parts.append(r)
        regions = Regions.concat(parts)
        if len(parts) > 1:
            keep = merge_views(torch.from_numpy(regions.boxes), torch.from_numpy(regions.scores),
                               torch.from_numpy(regions.frame).long(), torch.from_numpy(regions.kind),
                               p.view_nms_iou).numpy()
            # by frame; within a frame the whole-frame region first, then by score
            order = np.lexsort((-regions.scores[keep], -regions.kind[keep], regions.frame[keep]))
            regions = regions.take(keep[order])
        return regions

    @torch.no_grad()
    def extract(self, frames, extra_pooling: str | None = None, whole_frame: bool = False,
                cores: np.ndarray | None = None) -> Regions:
        """Frames (B, H, W, 3) uint8, all one size -> their regions in one view each (and, with
        extra_pooling, the same regions pooled a second way, for comparing DASR with DASR-m;
        with whole_frame, first per frame a region that is the whole frame; with cores (B, 4),
        x1, y1, x2, y2 as fractions of each frame, only the peaks whose cell centre lies there)."""
        p = self.preset
        t = time.perf_counter()
        x, (h0, w0) = self.prepare(frames)
        tape = Tape(self.graph, x, self.rules)
        t = self._tick("forward", t)
        peak_map = tape.values[self.graph.peak]
        mean_map = peak_map.mean(1)
        size = x.shape[-2:]
        mass = float(size[0] * size[1]) if p.dtype == "fp16" else 1.0
        all_pos, all_scores, counts = [], [], []
        for b in range(x.shape[0]):
            pos, scores = find_peaks(mean_map[b], p.peaks, p.max_peaks)
            if cores is not None:
                pos, scores = in_core(pos, scores, mean_map.shape[-2:], cores[b])
            if p.prefilter != "none" and p.nms_iou is not None and pos.shape[0] > 1:
                keep = self._prefilter(tape, b, peak_map[b], pos, scores, mass)
                pos, scores = pos[keep], scores[keep]
            all_pos.append(pos)
            all_scores.append(scores)
            counts.append(pos.shape[0])
        t = self._tick("peaks", t)
        pos = torch.cat(all_pos)
        scores = torch.cat(all_scores).float()
        peak_frame = np.repeat(np.arange(len(counts)), counts)  # on the host too: which chunks hold one frame
        self.counts["peaks"] += pos.shape[0]
        if p.cover > 0 and p.nms_iou is not None:
            run, boxes = self._uncovered(tape, peak_map, pos, scores, peak_frame, mass)
            pos, scores, peak_frame = pos[run], scores[run], peak_frame[run.cpu().numpy()]
        else:
            boxes = self._boxes(tape, peak_map, pos, peak_frame, mass)[0]
        self.counts["backpropagated"] += pos.shape[0]
        frame = torch.from_numpy(peak_frame).to(self.device)
        t = self._tick("backprop", t)
        keep = nms(boxes, scores, frame, p.nms_iou)
        # Regions ordered by frame, then by score.
        keep = keep[torch.argsort(frame[keep] * 1e6 - scores[keep].double(), stable=True)] if keep.numel() else keep
        boxes, scores, frame = boxes[keep], scores[keep], frame[keep]
        kind = torch.zeros_like(frame, dtype=torch.int8)
        if whole_frame:  # first per frame: the whole frame, scored by its mean activation
            nb = x.shape[0]
            whole = torch.tensor([[0.0, 0.0, float(size[1]), float(size[0])]], device=boxes.device).expand(nb, 4)
            frames_idx = torch.arange(nb, device=frame.device)
            order = torch.argsort(torch.cat([frames_idx * 2, frame * 2 + 1]), stable=True)
            boxes = torch.cat([whole, boxes])[order]
            scores = torch.cat([mean_map.flatten(1).mean(1).float(), scores])[order]
            frame = torch.cat([frames_idx, frame])[order]
            kind = torch.cat([torch.full((nb,), KIND_FRAME, dtype=torch.int8, device=frame.device), kind])[order]
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
                       extra, kind=kind.cpu().numpy())

    def _boxes(self, tape: Tape, peak_map: torch.Tensor, pos: torch.Tensor, peak_frame: np.ndarray,
               mass: float, cells: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boxes (K, 4) of peaks `pos` (K, 2) in frames `peak_frame` (K,), back-propagated in
        chunks that may span frames (a frame's ~10-100 peaks alone leave a GPU mostly idle); with
        `cells`, also each peak's map averaged over the peak layer's cells, as a fraction of its
        largest cell (K, h, w). Not synchronised per chunk: a sync per chunk would serialise it."""
        p = self.preset
        frame = torch.from_numpy(peak_frame).to(self.device)
        chunk = self._chunk(tape)
        all_boxes, all_cells = [], []
        for c in range(0, pos.shape[0], chunk):
            k = min(chunk, pos.shape[0] - c)
            part = torch.arange(c, c + k, device=self.device)
            if self.pad_chunks and k < chunk:
                # a few batch sizes only: cuDNN plans its kernels anew for each new shape, which
                # on a stream of frames with ever-different peak counts costs more than the work
                part = torch.cat([part, part[-1:].expand(_bucket(k, chunk) - k)])
            one = peak_frame[c] == peak_frame[c + k - 1]
            seeds = make_seeds(peak_map, pos[part], p.seed, mass, frame=frame[part])
            maps = tape.backprop(int(peak_frame[c]) if one else frame[part], seeds,
                                 window=tape.window(pos[part], p.window))
            all_boxes.append(maps_to_boxes(maps, p.threshold, p.tau, p.percentile)[:k])
            if cells:
                all_cells.append(cell_fractions(maps[:k], peak_map.shape[-2:]))
        empty = torch.zeros(0, 4, device=self.device)
        return (torch.cat(all_boxes) if all_boxes else empty), (torch.cat(all_cells) if cells and all_cells else None)

    def _uncovered(self, tape: Tape, peak_map: torch.Tensor, pos: torch.Tensor, scores: torch.Tensor,
                   peak_frame: np.ndarray, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted suppression (preset `cover`): the peaks of each frame go through best first,
        `cover_round` per frame at a time; NMS on what has gone through so far is already final
        for those peaks (greedy NMS decides a box by the better ones only), and a peak still
        waiting is skipped where a kept region's map at its cell is at least `cover` of that
        map's largest cell: it sits on an object already found, and NMS would almost always
        remove its box. Returns the indices of the peaks that went through (in the order given)
        and their boxes."""
        p = self.preset
        n = pos.shape[0]
        waiting = np.ones(n, dtype=bool)
        done = np.zeros(n, dtype=bool)
        boxes = torch.zeros(n, 4, device=self.device)
        frame = torch.from_numpy(peak_frame).to(self.device)
        starts = np.searchsorted(peak_frame, np.arange(int(peak_frame.max(initial=-1)) + 2))
        while True:
            take = np.concatenate([np.flatnonzero(waiting[a:b])[: self.cover_round] + a for a, b in zip(starts[:-1], starts[1:])]
                                  + [np.zeros(0, dtype=np.int64)])
            if take.size == 0:
                break
            waiting[take], done[take] = False, True
            t_take = torch.from_numpy(take).to(self.device)
            got, cells = self._boxes(tape, peak_map, pos[t_take], peak_frame[take], mass, cells=True)
            boxes[t_take] = got
            ran = np.flatnonzero(done)
            t_ran = torch.from_numpy(ran).to(self.device)
            kept = ran[nms(boxes[t_ran], scores[t_ran], frame[t_ran], p.nms_iou).cpu().numpy()]
            new = np.isin(take, kept)
            rest = np.flatnonzero(waiting)
            if new.any() and rest.size:
                t_rest = torch.from_numpy(rest).to(self.device)
                at = cells[torch.from_numpy(np.flatnonzero(new)).to(self.device)][:, pos[t_rest, 0], pos[t_rest, 1]]
                same = torch.from_numpy(peak_frame[take[new]][:, None] == peak_frame[rest][None, :]).to(self.device)
                covered = ((at >= p.cover) & same).any(0).cpu().numpy()
                waiting[rest[covered]] = False
        ran = torch.from_numpy(np.flatnonzero(done)).to(self.device)
        return ran, boxes[ran]

    def _chunk(self, tape: Tape) -> int:
        """Peaks per back-propagation: the device's (or preset's) number for whole frames; on a
        GPU more where spatial windows make each peak's pass smaller (its memory is that of its
        window). Not on the CPU: larger batches there only add memory traffic."""
        if self.preset.peak_chunk or self.device.type == "cpu":
            return self.peak_chunk
        # the window the passes will use (None where windows do not apply to this frame size)
        win = tape.window(torch.zeros(1, 2, dtype=torch.int64, device=self.device), self.preset.window)
        if win is None:
            return self.peak_chunk
        h, w = tape.values[0].shape[-2:]
        return self.peak_chunk * max(1, (h * w) // (win.h * win.w))

    def _prefilter(self, tape: Tape, b: int, peak_map: torch.Tensor, pos: torch.Tensor, scores: torch.Tensor,
                   mass: float) -> torch.Tensor:
        """Seeds worth the full pass: NMS on boxes from a pass stopped at a coarse stride.
        Seeds on one blob of X̄ give nearly the same map, and NMS keeps one of them; the coarse
        maps show which, at a fraction of the cost (bench/dasr_variants.py measures it)."""
        p = self.preset
        t0 = time.perf_counter()
        boxes = []
        for c in range(0, pos.shape[0], self.peak_chunk):
            seeds = make_seeds(peak_map, pos[c : c + self.peak_chunk], p.seed, mass)
            maps = tape.backprop(b, seeds, stop=p.prefilter, window=tape.window(pos[c : c + self.peak_chunk], p.window))
            boxes.append(maps_to_boxes(maps, p.threshold, p.tau, p.percentile))
        boxes = torch.cat(boxes)
        keep = nms(boxes, scores.float(), torch.zeros_like(scores, dtype=torch.int64), p.nms_iou)
        self._tick("prefilter", t0)
        return keep.sort().values  # still best score first

    @torch.no_grad()
    def describe(self, image: np.ndarray, box: tuple[float, float, float, float] | None = None,
                 long_side: int | None = None) -> np.ndarray:
        """One image (H, W, 3) uint8 and a box x1, y1, x2, y2 in its pixels (None = whole image)
        -> the L2-normalised raw descriptor pooled inside the box, as for library regions; the
        image is seen at `long_side` (default: the preset's; 0: its own size)."""
        x, (h0, w0) = self.prepare(image[None], long_side)
        feats = self.graph.output(x, self.graph.feature)
        h, w = x.shape[-2:]
        if box is None:
            box = (0.0, 0.0, float(w0), float(h0))
        sx, sy = w / w0, h / h0
        b = torch.tensor([[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]], device=self.device)
        vec = l2n(pool_boxes(feats.float(), b, torch.zeros(1, dtype=torch.int64, device=self.device),
                             (h, w), self.preset.pooling))
        return vec[0].cpu().numpy().astype(np.float32)
