"""`vidsearch eval`: the Instance-160 protocol on tracking sequences, with image-level baselines.

Per sequence the query is its first frame (and optionally its middle frame) with the ground-truth
box; references are every `stride`-th later frame (5, 9, 13, ... for stride 4) of all sequences
pooled, so the other sequences are distractors; a query's true positives are the references of
its own sequence that show the target. Region methods score an image by its best region (whose
box is the localisation); the baselines (MAC, SPoC, R-MAC, CroW) describe whole images and
return the whole frame as their box. All methods share one backbone and the same frames.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import Preset, load_preset
from .dasr.describe import Whitening, l2n
from .errors import InputError

REGION_METHODS = ("dasr", "dasr*", "dasr-m", "dasr-m*")
BASELINES = ("mac", "spoc", "rmac", "crow")


# ----------------------------------------------------------------------------- metrics


def average_precision(scores: np.ndarray, relevant: np.ndarray, k: int | None = None) -> float:
    """AP of a ranking by descending score, truncated at k (None = all).

    Ties are broken pessimistically (relevant items rank after irrelevant ones with the same
    score), so a method cannot gain from constant scores. AP@k divides by min(k, #relevant).
    Returns nan when nothing is relevant."""
    relevant = np.asarray(relevant, dtype=bool)
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return float("nan")
    order = np.lexsort((relevant.astype(int), -np.asarray(scores, dtype=np.float64)))
    rel = relevant[order]
    if k is not None:
        rel = rel[:k]
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    denom = min(k, n_rel) if k is not None else n_rel
    return float((precision * rel).sum() / denom)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ----------------------------------------------------------------------------- data


@dataclass
class Sequence:
    name: str
    frames: list[Path]
    boxes: list[tuple[float, float, float, float] | None]  # x1, y1, x2, y2 or None (absent)


def load_sequences(root: str | Path) -> list[Sequence]:
    root = Path(root)
    base = root / "sequences" if (root / "sequences").is_dir() else root
    seqs = []
    for d in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        gt, img = d / "groundtruth.txt", d / "img"
        if not gt.is_file() or not img.is_dir():
            continue
        frames = sorted(p for p in img.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        boxes = []
        for line in gt.read_text().splitlines():
            vals = [v for v in line.replace("\t", ",").replace(" ", ",").split(",") if v]
            try:
                x, y, w, h = (float(v) for v in vals[:4])
            except ValueError:
                raise InputError(f"{gt}: line {len(boxes) + 1} is not x,y,w,h") from None
            boxes.append(None if any(math.isnan(v) for v in (x, y, w, h)) or w <= 0 or h <= 0 else (x, y, x + w, y + h))
        if len(boxes) < len(frames):
            raise InputError(f"{gt} has {len(boxes)} boxes for {len(frames)} frames")
        seqs.append(Sequence(d.name, frames, boxes[: len(frames)]))
    if not seqs:
        raise InputError(f"{root} holds no sequences (<name>/img/*.jpg + <name>/groundtruth.txt)")
    return seqs


@dataclass
class Protocol:
    queries: list[tuple[int, int]]  # (sequence, frame index)
    references: list[tuple[int, int]]


def make_protocol(seqs: list[Sequence], stride: int = 4, queries: str = "first",
                  max_frames: int | None = None) -> Protocol:
    if stride < 1:
        raise InputError(f"--stride must be at least 1, got {stride}")
    qs, refs = [], []
    for si, s in enumerate(seqs):
        present = [i for i, b in enumerate(s.boxes) if b is not None]
        if not present:
            continue
        chosen = [present[0]]
        if queries == "first+middle":
            mid = present[len(present) // 2]
            if mid != present[0]:
                chosen.append(mid)
        elif queries != "first":
            raise InputError(f"--queries must be first or first+middle, got {queries!r}")
        qs += [(si, i) for i in chosen]
        ref = list(range(stride, len(s.frames), stride))  # frames 5, 9, 13, ... (1-based)
        if max_frames:
            ref = ref[:max_frames]
        refs += [(si, i) for i in ref if i not in chosen]
    return Protocol(qs, refs)


def read_image(path: Path) -> np.ndarray:
    from .api import load_image

    return load_image(path)


# ----------------------------------------------------------------------------- image-level baselines


def _pca_whiten(train: np.ndarray) -> Whitening:
    return Whitening.fit(l2n(train), shrink=1e-3)


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """Tolias et al.'s R-MAC grid: square regions of side 2·min(h,w)/(l+1) at l = 1..L with
    about 40 % overlap, plus the whole map (y1, y2, x1, x2 on the feature map)."""
    regions = [(0, h, 0, w)]
    short = min(h, w)
    for level in range(1, levels + 1):
        side = max(1, int(round(2 * short / (level + 1))))
        ny = level + (1 if h > w and h - side > 0 else 0)
        nx = level + (1 if w > h and w - side > 0 else 0)
        ys = np.linspace(0, h - side, ny).round().astype(int) if ny > 1 else [max(0, (h - side) // 2)]
        xs = np.linspace(0, w - side, nx).round().astype(int) if nx > 1 else [max(0, (w - side) // 2)]
        regions += [(y, y + side, x, x + side) for y in ys for x in xs]
    return regions


def global_descriptors(x: torch.Tensor, method: str) -> np.ndarray | list[np.ndarray]:
    """x: (C, h, w) non-negative last-conv map -> a descriptor (R-MAC: its regional vectors)."""
    if method == "mac":
        return x.amax((1, 2)).numpy()
    if method == "spoc":
        return x.sum((1, 2)).numpy()
    if method == "rmac":
        _, h, w = x.shape
        return [x[:, y1:y2, x1:x2].amax((1, 2)).numpy() for y1, y2, x1, x2 in rmac_regions(h, w)]
    if method == "crow":
        s = x.sum(0)
        s = s / max(float(s.pow(2).sum().sqrt()), 1e-12)
        s = s.sqrt()  # a = 2, b = 2
        nonzero = (x > 0).float().mean((1, 2)).clamp(min=1e-6)
        omega = torch.log(nonzero.sum() / nonzero)
        return (omega * (x * s).sum((1, 2))).numpy()
    raise InputError(f"unknown baseline {method!r}")


# ----------------------------------------------------------------------------- methods


@dataclass
class MethodSpec:
    name: str
    base: str
    official: bool = False
    whiten: bool | None = None  # None: region methods follow the preset, baselines whiten (as published)
    peak_layer: str = ""
    feature_layer: str = ""

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        base, *opts = text.split(":")
        if base not in REGION_METHODS + BASELINES:
            raise InputError(f"unknown method {base!r}: use {', '.join(REGION_METHODS + BASELINES)} "
                             "with optional suffixes :official :whiten :nowhiten :feat=LAYER :peak=LAYER")
        spec = cls(text, base)
        for o in opts:
            if o == "official":
                spec.official = True
            elif o == "nowhiten":
                spec.whiten = False
            elif o == "whiten":
                spec.whiten = True
            elif o.startswith("feat="):
                spec.feature_layer = o[5:]
            elif o.startswith("peak="):
                spec.peak_layer = o[5:]
            else:
                raise InputError(f"unknown method option {o!r} in {text!r}")
        return spec

    def preset(self, base: Preset) -> Preset:
        p = load_preset("official-code").replace(backbone=base.backbone, long_side=base.long_side,
                                                 dtype=base.dtype) if self.official else base
        star = self.base.endswith("*")
        if self.official:
            peaks = "local_max_official"
        else:
            peaks = "above_mean" if star else "local_max"
        return p.replace(peaks=peaks, nms_iou=0.3 if star else None,
                         pooling="max" if self.base.startswith("dasr-m") else "avg",
                         peak_layer=self.peak_layer or p.peak_layer, feature_layer=self.feature_layer or p.feature_layer)


@dataclass
class Scored:
    scores: np.ndarray  # (Q, R)
    boxes: np.ndarray  # (Q, R, 4) in reference image pixels
    regions_per_frame: float
    frames_per_s: float
    notes: list[str] = field(default_factory=list)


def _query_images(seqs, proto):
    out = []
    for si, i in proto.queries:
        out.append((read_image(seqs[si].frames[i]), seqs[si].boxes[i]))
    return out


def _reference_batches(seqs, proto, batch: int):
    """Reference frames grouped by sequence (one size per batch)."""
    group: list[tuple[int, np.ndarray]] = []
    last_seq = None
    for r, (si, i) in enumerate(proto.references):
        if group and (si != last_seq or len(group) == batch):
            yield group
            group = []
        group.append((r, read_image(seqs[si].frames[i])))
        last_seq = si
    if group:
        yield group


def run_region_method(spec: MethodSpec, base: Preset, seqs, proto, device: str, batch: int,
                      cache: dict, progress=None) -> Scored:
    from .dasr.engine import Engine

    preset = spec.preset(base)
    key = (preset.replace(pooling="avg").fingerprint(), preset.dtype)
    if key not in cache:
        engine = Engine(preset.replace(pooling="avg"), device)
        regs = {"frame": [], "boxes": [], "avg": [], "max": []}
        t0 = time.perf_counter()
        for group in _reference_batches(seqs, proto, batch):
            rows = [r for r, _ in group]
            frames = np.stack([img for _, img in group])
            out = engine.extract(frames, extra_pooling="max")
            regs["frame"].append(np.array(rows)[out.frame])
            regs["boxes"].append(out.boxes)
            regs["avg"].append(out.vectors)
            regs["max"].append(out.extra)
            if progress:
                progress(len(group))
        seconds = time.perf_counter() - t0
        cache[key] = {k: np.concatenate(v) for k, v in regs.items()}, seconds, engine
    regs, seconds, engine = cache[key]
    pool = "max" if spec.base.startswith("dasr-m") else "avg"
    vectors = regs[pool]
    raw_q = []
    for img, box in _query_images(seqs, proto):
        engine.preset = engine.preset.replace(pooling=pool)
        raw_q.append(engine.describe(img, box))
        engine.preset = engine.preset.replace(pooling="avg")
    q = np.stack(raw_q)
    if spec.whiten if spec.whiten is not None else base.whiten:
        w = Whitening.fit(vectors, shrink=1e-3)
        vectors, q = w.apply(vectors), w.apply(q)
    sims = q @ vectors.T  # (Q, N regions)
    n_ref = len(proto.references)
    scores = np.full((len(q), n_ref), -np.inf, dtype=np.float32)
    boxes = np.zeros((len(q), n_ref, 4), dtype=np.float32)
    frame = regs["frame"]
    for qi in range(len(q)):
        order = np.argsort(-sims[qi], kind="stable")
        seen = np.zeros(n_ref, dtype=bool)
        for j in order:  # best region per reference
            f = frame[j]
            if not seen[f]:
                seen[f] = True
                scores[qi, f] = sims[qi, j]
                boxes[qi, f] = regs["boxes"][j]
    return Scored(scores, boxes, len(frame) / max(1, n_ref), n_ref / max(seconds, 1e-9))


def run_baseline(method: str, base: Preset, seqs, proto, device: str, batch: int, cache: dict, progress=None,
                 whiten: bool = True) -> Scored:
    from .dasr.engine import Engine

    if "engine" not in cache:
        cache["engine"] = Engine(base.replace(peaks="local_max", nms_iou=None), device)
    engine = cache["engine"]
    graph = engine.graph

    def last_conv(images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            x, _ = engine.prepare(images)
            return graph.forward(x)[graph.peak].float().cpu()

    ckey = ("maps",)
    if ckey not in cache:
        t0 = time.perf_counter()
        maps, sizes = [None] * len(proto.references), [None] * len(proto.references)
        for group in _reference_batches(seqs, proto, batch):
            frames = np.stack([img for _, img in group])
            xs = last_conv(frames)
            for (r, img), x in zip(group, xs):
                maps[r], sizes[r] = x, img.shape[:2]
            if progress:
                progress(len(group))
        cache[ckey] = maps, sizes, time.perf_counter() - t0
    maps, sizes, seconds = cache[ckey]
    descs = [global_descriptors(x, method) for x in maps]
    queries = []
    for img, box in _query_images(seqs, proto):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        crop = img[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)]
        queries.append(global_descriptors(last_conv(crop[None])[0], method))
    if method == "rmac":
        w = _pca_whiten(np.concatenate([np.stack(d) for d in descs])) if whiten else None

        def agg(regional):
            r = l2n(np.stack(regional))
            return l2n((w.apply(r) if w is not None else r).sum(0))

        refs = np.stack([agg(d) for d in descs])
        q = np.stack([agg(d) for d in queries])
    else:
        refs = l2n(np.stack(descs))
        q = l2n(np.stack(queries))
        if whiten:
            w = _pca_whiten(refs)
            refs, q = w.apply(refs), w.apply(q)
    scores = (q @ refs.T).astype(np.float32)
    boxes = np.zeros((len(q), len(refs), 4), dtype=np.float32)
    for r, (h, wd) in enumerate(sizes):
        boxes[:, r] = [0, 0, wd, h]
    return Scored(scores, boxes, 1.0, len(refs) / max(seconds, 1e-9))


def metrics(scored: Scored, seqs, proto, loc_k: int = 50) -> dict:
    ref_seq = np.array([si for si, _ in proto.references])
    out = {"map@50": [], "map@100": [], "map@all": []}
    ious = []
    per_query = {}
    for qi, (si, fi) in enumerate(proto.queries):
        relevant = np.array([ref_seq[r] == si and seqs[si].boxes[proto.references[r][1]] is not None
                             for r in range(len(proto.references))])
        s = scored.scores[qi]
        ap = {k: average_precision(s, relevant, kk) for k, kk in (("ap@50", 50), ("ap@100", 100), ("ap@all", None))}
        if math.isnan(ap["ap@all"]):
            continue
        name = seqs[si].name + ("" if fi == next(i for i, b in enumerate(seqs[si].boxes) if b) else f"@{fi + 1}")
        per_query[name] = {k: round(v, 4) for k, v in ap.items()}
        for k, m in (("ap@50", "map@50"), ("ap@100", "map@100"), ("ap@all", "map@all")):
            out[m].append(ap[k])
        order = np.lexsort((relevant.astype(int), -s))[:loc_k]
        for r in order:
            if relevant[r]:
                ious.append(iou(scored.boxes[qi, r], seqs[si].boxes[proto.references[r][1]]))
    result = {k: round(float(np.mean(v)), 4) if v else None for k, v in out.items()}
    result["loc_recall@0.5"] = round(float(np.mean([v >= 0.5 for v in ious])), 4) if ious else None
    result["miou"] = round(float(np.mean(ious)), 4) if ious else None
    result["regions_per_frame"] = round(scored.regions_per_frame, 2)
    result["frames_per_s"] = round(scored.frames_per_s, 3)
    result["per_query"] = per_query
    return result


DEFAULT_METHODS = ("dasr", "dasr*", "dasr-m", "dasr-m*", "dasr:official", "dasr*:official", "mac", "spoc", "rmac", "crow")


def evaluate(data: str | Path, methods: list[str] | None = None, preset: str = "default", device: str = "auto",
             stride: int = 4, queries: str = "first", max_frames: int | None = None, batch: int = 4,
             progress=None) -> dict:
    """Run the protocol; `progress(method, total)` returns a callback taking a frame count."""
    from .dasr.engine import resolve_device

    specs = [MethodSpec.parse(m) for m in (methods or DEFAULT_METHODS)]
    base = load_preset(preset)
    seqs = load_sequences(data)
    proto = make_protocol(seqs, stride, queries, max_frames)
    dev = str(resolve_device(device))
    cache: dict = {}
    results = {}
    for spec in specs:
        tick = progress(spec.name, len(proto.references)) if progress else None
        if spec.base in BASELINES:
            scored = run_baseline(spec.base, base, seqs, proto, dev, batch, cache, tick, spec.whiten is not False)
        else:
            scored = run_region_method(spec, base, seqs, proto, dev, batch, cache, tick)
        results[spec.name] = metrics(scored, seqs, proto)
    return {"data": str(Path(data).resolve()), "preset": base.name, "device": dev,
            "protocol": {"stride": stride, "queries": len(proto.queries), "references": len(proto.references),
                         "sequences": len(seqs), "max_frames": max_frames},
            "methods": results}
