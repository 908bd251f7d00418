"""`vidsearch eval`: the Instance-160 protocol on tracking sequences, with image-level baselines.

Per sequence the query is its first frame (and optionally its middle frame) with the ground-truth
box; references are every `stride`-th later frame (5, 9, 13, ... for stride 4) of all sequences
pooled, so the other sequences are distractors; a query's true positives are the references of
its own sequence that show the target. Region methods score an image by its best region (whose
box is the localisation); the baselines (MAC, SPoC, R-MAC, CroW) describe whole images and
return the whole frame as their box. All methods share one backbone and the same frames.

The cross-scene protocol asks what the tracking protocol cannot: is the object found where the
background differs? A query's true positives are then the references of *other* sequences that
show the same instance (meta.json "instance"); its own sequence's references are left out of its
ranking. Queries are the frame with its box (`frame`), or the box cut out alone (`crop`), as
an editor's crop is. Every metric is also reported per object-size bucket: the target's area as
a fraction of its frame (< 1 %, 1-5 %, > 5 %); a bucket's AP leaves out the true positives of
the other buckets.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import INDEX_FIELDS, SPEED_FIELDS, Preset, load_preset, with_overrides
from .dasr.describe import l2n
from .dasr.whitening import Whitening
from .errors import InputError
from .refine import RERANK_DEPTH, RERANKED

REGION_METHODS = ("dasr", "dasr*", "dasr-m", "dasr-m*")
BASELINES = ("mac", "spoc", "rmac", "crow")


# ----------------------------------------------------------------------------- metrics


BUCKETS = (("<1%", 0.0, 0.01), ("1-5%", 0.01, 0.05), (">5%", 0.05, float("inf")))


def size_bucket(fraction: float) -> str:
    return next(name for name, lo, hi in BUCKETS if lo <= fraction < hi)


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
    instance: str = ""  # which object (meta.json "instance"; default: the sequence's own name)
    size: tuple[int, int] = (0, 0)  # frame width, height

    def area_fraction(self, i: int) -> float:
        x1, y1, x2, y2 = self.boxes[i]
        return (x2 - x1) * (y2 - y1) / max(1, self.size[0] * self.size[1])


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
        instance = d.name
        if (d / "meta.json").is_file():
            try:
                instance = str(json.loads((d / "meta.json").read_text()).get("instance") or d.name)
            except (ValueError, AttributeError):
                raise InputError(f"{d / 'meta.json'} is not a JSON object") from None
        from PIL import Image

        with Image.open(frames[0]) as first:
            size = first.size
        seqs.append(Sequence(d.name, frames, boxes[: len(frames)], instance, size))
    if not seqs:
        raise InputError(f"{root} holds no sequences (<name>/img/*.jpg + <name>/groundtruth.txt)")
    return seqs


PROTOCOLS = ("tracking", "cross-scene")
QUERY_MODES = ("frame", "crop")


@dataclass
class Protocol:
    queries: list[tuple[int, int]]  # (sequence, frame index)
    references: list[tuple[int, int]]
    kind: str = "tracking"  # or cross-scene
    query_mode: str = "frame"  # the frame with its box, or the box cut out alone

    def judgements(self, seqs: list[Sequence], qi: int) -> tuple[np.ndarray, np.ndarray]:
        """(relevant, left out) over the references, for query qi."""
        sq = self.queries[qi][0]
        same_seq = np.array([si == sq for si, _ in self.references])
        present = np.array([seqs[si].boxes[i] is not None for si, i in self.references])
        if self.kind == "tracking":
            return same_seq & present, np.zeros(len(self.references), dtype=bool)
        same_instance = np.array([seqs[si].instance == seqs[sq].instance for si, _ in self.references])
        return same_instance & ~same_seq & present, same_seq


def make_protocol(seqs: list[Sequence], stride: int = 4, queries: str = "first",
                  max_frames: int | None = None, kind: str = "tracking", query_mode: str = "frame") -> Protocol:
    if stride < 1:
        raise InputError(f"--stride must be at least 1, got {stride}")
    if kind not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {kind!r}")
    if query_mode not in QUERY_MODES:
        raise InputError(f"--query-mode must be one of {', '.join(QUERY_MODES)}, got {query_mode!r}")
    qs, refs = [], []
    instances = [s.instance for s in seqs]
    for si, s in enumerate(seqs):
        present = [i for i, b in enumerate(s.boxes) if b is not None]
        if not present:
            continue
        if kind == "cross-scene" and instances.count(s.instance) < 2:
            ref = list(range(stride, len(s.frames), stride))  # still a distractor for the others
            refs += [(si, i) for i in (ref[:max_frames] if max_frames else ref)]
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
    if not qs:
        raise InputError("no sequence's object appears in another sequence (meta.json \"instance\"): "
                         "the cross-scene protocol needs such data, e.g. bench/small_objects.py makes it"
                         if kind == "cross-scene" else "no sequence shows its target")
    return Protocol(qs, refs, kind, query_mode)


def read_image(path: Path) -> np.ndarray:
    from .queries import load_image

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
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE on the preset
    refine: bool = False  # query-guided boxes on the true positives (refine.py)
    rerank: int = 0  # re-rank each query's top N references by the query-guided match (refine.py)

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        base, *opts = text.split(":")
        if base not in REGION_METHODS + BASELINES:
            raise InputError(f"unknown method {base!r}: use {', '.join(REGION_METHODS + BASELINES)} "
                             "with optional suffixes :official :whiten :nowhiten :feat=LAYER :peak=LAYER "
                             ":refine :rerank[=N] :KEY=VALUE (any preset key, e.g. :tiles=1,2)")
        spec = cls(text, base)
        for o in opts:
            if o == "official":
                spec.official = True
            elif o == "nowhiten":
                spec.whiten = False
            elif o == "whiten":
                spec.whiten = True
            elif o == "refine":
                spec.refine = True
            elif o == "rerank" or o.startswith("rerank="):
                try:
                    spec.rerank = int(o[7:]) if "=" in o else RERANK_DEPTH  # find's default
                except ValueError:
                    raise InputError(f"{o!r} in {text!r}: rerank=N takes a number of references") from None
                if spec.rerank < 1:
                    raise InputError(f"{o!r} in {text!r}: rerank=N needs N of at least 1")
            elif o.startswith("feat="):
                spec.feature_layer = o[5:]
            elif o.startswith("peak="):
                spec.peak_layer = o[5:]
            elif "=" in o:
                spec.overrides.append(o)
            else:
                raise InputError(f"unknown method option {o!r} in {text!r}")
        if spec.overrides:
            with_overrides(Preset(), spec.overrides)  # a bad key or value is an error now, not later
        return spec

    def preset(self, base: Preset) -> Preset:
        p = load_preset("official-code").replace(backbone=base.backbone, long_side=base.long_side,
                                                 dtype=base.dtype) if self.official else base
        star = self.base.endswith("*")
        if self.official:
            peaks = "local_max_official"
        else:
            peaks = "above_mean" if star else "local_max"
        p = p.replace(peaks=peaks, nms_iou=0.3 if star else None,
                      pooling="max" if self.base.startswith("dasr-m") else "avg",
                      peak_layer=self.peak_layer or p.peak_layer, feature_layer=self.feature_layer or p.feature_layer)
        return with_overrides(p, self.overrides)


@dataclass
class Scored:
    scores: np.ndarray  # (Q, R)
    boxes: np.ndarray  # (Q, R, 4) in reference image pixels
    regions_per_frame: float
    frames_per_s: float
    notes: list[str] = field(default_factory=list)
    refine_ms: float | None = None  # query-guided boxes: milliseconds per frame
    rerank_ms: float | None = None  # re-ranking: milliseconds per frame checked


def _query_images(seqs, proto) -> list[tuple[np.ndarray, tuple[float, float, float, float] | None]]:
    """(image, box) per query: the frame and its box, or (crop mode) the box cut out and None."""
    out = []
    for si, i in proto.queries:
        img, box = read_image(seqs[si].frames[i]), seqs[si].boxes[i]
        if proto.query_mode == "crop":
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            img, box = np.ascontiguousarray(img[max(0, y1) : max(y1 + 1, y2), max(0, x1) : max(x1 + 1, x2)]), None
        out.append((img, box))
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


def _disk_cache(cache: dict, key: str, seqs, proto) -> Path | None:
    """Where a run's reference regions are kept between runs (eval --cache DIR), named by the
    preset and the reference frames, so protocols and query modes can be compared for free."""
    root = cache.get("dir")
    if root is None:
        return None
    import hashlib

    frames = [str(seqs[si].frames[i].resolve()) for si, i in proto.references]
    return Path(root) / (hashlib.sha256(json.dumps([key, frames]).encode()).hexdigest()[:24] + ".npz")


def run_region_method(spec: MethodSpec, base: Preset, seqs, proto, device: str, batch: int,
                      cache: dict, progress=None) -> Scored:
    from .dasr.engine import Engine
    from .dasr.query import query_views

    preset = spec.preset(base)
    # what decides the regions; index settings (used by libraries, not here) and speed knobs
    # that leave the regions as they are are left out
    key = json.dumps({k: v for k, v in preset.replace(pooling="avg", name="", description="").to_dict().items()
                      if k not in INDEX_FIELDS | SPEED_FIELDS}, sort_keys=True)
    disk = _disk_cache(cache, key, seqs, proto)
    if key not in cache and disk is not None and disk.is_file():
        with np.load(disk) as z:
            cache[key] = {k: z[k] if k in z.files else np.ones(len(z["frame"]), np.int8)
                          for k in ("frame", "boxes", "avg", "max", "level")}, float(z["seconds"]), \
                Engine(preset.replace(pooling="avg"), device)
    if key not in cache:
        engine = Engine(preset.replace(pooling="avg"), device)
        regs = {"frame": [], "boxes": [], "avg": [], "max": [], "level": []}
        t0 = time.perf_counter()
        for group in _reference_batches(seqs, proto, batch):
            rows = [r for r, _ in group]
            frames = np.stack([img for _, img in group])
            out = engine.extract_views(frames, extra_pooling="max")
            regs["frame"].append(np.array(rows)[out.frame])
            regs["boxes"].append(out.boxes)
            regs["avg"].append(out.vectors)
            regs["max"].append(out.extra)
            regs["level"].append(out.level)
            if progress:
                progress(len(group))
        seconds = time.perf_counter() - t0
        cache[key] = {k: np.concatenate(v) for k, v in regs.items()}, seconds, engine
        if disk is not None:
            disk.parent.mkdir(parents=True, exist_ok=True)
            np.savez(disk, seconds=seconds, **cache[key][0])
    regs, seconds, engine = cache[key]
    pool = "max" if spec.base.startswith("dasr-m") else "avg"
    vectors = regs[pool]
    sizes = sorted({seqs[si].size for si, _ in proto.references})
    engine.preset = engine.preset.replace(pooling=pool)
    views = [np.stack(query_views(engine, img, box, sizes)) for img, box in _query_images(seqs, proto)]
    engine.preset = engine.preset.replace(pooling="avg")
    whitened = spec.whiten if spec.whiten is not None else base.whiten
    if whitened:
        w = Whitening.fit(vectors, shrink=1e-3)
        vectors, views = w.apply(vectors), [w.apply(v) for v in views]
    sims = np.stack([(v @ vectors.T).max(0) for v in views])  # (Q, N regions), each at its best view
    n_ref = len(proto.references)
    scores = np.full((len(views), n_ref), -np.inf, dtype=np.float32)
    boxes = np.zeros((len(views), n_ref, 4), dtype=np.float32)
    frame = regs["frame"]
    for qi in range(len(views)):
        order = np.argsort(-sims[qi], kind="stable")
        seen = np.zeros(n_ref, dtype=bool)
        for j in order:  # best region per reference
            f = frame[j]
            if not seen[f]:
                seen[f] = True
                scores[qi, f] = sims[qi, j]
                boxes[qi, f] = regs["boxes"][j]
    scored = Scored(scores, boxes, len(frame) / max(1, n_ref), n_ref / max(seconds, 1e-9))
    if spec.refine or spec.rerank:
        engine.preset = engine.preset.replace(pooling=pool)
        done = _rerank(scored, engine, seqs, proto, spec.rerank) if spec.rerank else None
        if spec.refine:
            _refine_true_positives(scored, engine, seqs, proto, done)
        engine.preset = engine.preset.replace(pooling="avg")
    return scored


def _match_references(scored: Scored, engine, seqs, proto, pick, what: str) -> tuple[dict, float]:
    """The query-guided match (refine.py) of each query on the references `pick(qi, scores,
    relevant, left_out)` names, from the best region's box: ({(query, reference): Refined},
    milliseconds per frame), the cost also noted under `what`."""
    from .refine import make_template, refine_box, refine_layer

    queries = _query_images(seqs, proto)
    layer = refine_layer(engine)
    found, seconds = {}, 0.0
    for qi, (img, box) in enumerate(queries):
        relevant, left_out = proto.judgements(seqs, qi)
        chosen = pick(qi, np.where(left_out, -np.inf, scored.scores[qi]), relevant, left_out)
        templates = [make_template(engine, layer, img, box)]
        for r in chosen:
            si, i = proto.references[r]
            ref = read_image(seqs[si].frames[i])
            t0 = time.perf_counter()
            found[(qi, int(r))] = refine_box(engine, layer, ref, templates, scored.boxes[qi, r])
            seconds += time.perf_counter() - t0
    ms = 1000 * seconds / max(1, len(found))
    scored.notes.append(f"{what}: {len(found)} frames, {ms:.0f} ms per frame")
    return found, ms


def _rerank(scored: Scored, engine, seqs, proto, depth: int) -> np.ndarray:
    """`find`'s re-ranking (rerank.rerank_segments): each query's top `depth` references ordered by
    the query-guided match on them, above the rest, which keep their order; their boxes become
    the matched ones. Returns which (query, reference) boxes were refined."""
    def top(qi, s, relevant, left_out):
        return np.argsort(-s, kind="stable")[: min(depth, int((~left_out).sum()))]

    found, scored.rerank_ms = _match_references(scored, engine, seqs, proto, top, f"rerank top {depth}")
    done = np.zeros(scored.scores.shape, dtype=bool)
    for (qi, r), out in found.items():
        scored.scores[qi, r] = RERANKED + out.score
        scored.boxes[qi, r] = out.box
        done[qi, r] = True
    return done


def _refine_true_positives(scored: Scored, engine, seqs, proto, done: np.ndarray | None = None,
                           loc_k: int = 50) -> None:
    """Query-guided boxes (refine.py) on the true positives among each query's top loc_k: the
    frames whose boxes localisation is measured on; ranking stays as it is. Boxes already
    refined (`done`, by re-ranking) are kept."""
    def true_positives(qi, s, relevant, left_out):
        return [r for r in np.lexsort((relevant.astype(int), -s))[:loc_k]
                if relevant[r] and (done is None or not done[qi, r])]

    found, scored.refine_ms = _match_references(scored, engine, seqs, proto, true_positives, "refine")
    for (qi, r), out in found.items():
        scored.boxes[qi, r] = out.box


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
            return graph.output(x, graph.peak).float().cpu()

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
        x = last_conv(img[None])[0]
        if box is not None:  # the same query as the region methods get: pooled in the frame, in the box
            h, w = img.shape[:2]
            sy, sx = x.shape[1] / h, x.shape[2] / w
            y1, x1 = min(int(box[1] * sy), x.shape[1] - 1), min(int(box[0] * sx), x.shape[2] - 1)
            y2, x2 = max(y1 + 1, int(np.ceil(box[3] * sy))), max(x1 + 1, int(np.ceil(box[2] * sx)))
            x = x[:, y1:y2, x1:x2]
        queries.append(global_descriptors(x, method))
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


def _summary(aps: dict[str, list[float]], ious: list[float]) -> dict:
    out = {k: round(float(np.mean(v)), 4) if v else None for k, v in aps.items()}
    out["loc_recall@0.5"] = round(float(np.mean([v >= 0.5 for v in ious])), 4) if ious else None
    out["miou"] = round(float(np.mean(ious)), 4) if ious else None
    return out


def metrics(scored: Scored, seqs, proto, loc_k: int = 50) -> dict:
    """mAP@50/100/all and localisation (recall at IoU 0.5, mean IoU of the true positives in the
    top loc_k), overall and per size bucket of the references' targets."""
    ref_bucket = np.array([size_bucket(seqs[si].area_fraction(i)) if seqs[si].boxes[i] is not None else ""
                           for si, i in proto.references])
    names = {"ap@50": "map@50", "ap@100": "map@100", "ap@all": "map@all"}
    overall = {m: [] for m in names.values()}
    per_bucket = {b: ({m: [] for m in names.values()}, [], set()) for b, _, _ in BUCKETS}
    ious: list[float] = []
    per_query = {}
    for qi, (si, fi) in enumerate(proto.queries):
        relevant, left_out = proto.judgements(seqs, qi)
        keep = ~left_out
        s, rel, refs = scored.scores[qi][keep], relevant[keep], np.nonzero(keep)[0]
        ap = {k: average_precision(s, rel, kk) for k, kk in (("ap@50", 50), ("ap@100", 100), ("ap@all", None))}
        if math.isnan(ap["ap@all"]):
            continue
        name = seqs[si].name + ("" if fi == next(i for i, b in enumerate(seqs[si].boxes) if b) else f"@{fi + 1}")
        per_query[name] = {k: round(v, 4) for k, v in ap.items()}
        for k, m in names.items():
            overall[m].append(ap[k])
        top = np.lexsort((rel.astype(int), -s))[:loc_k]
        tp_iou = {int(refs[r]): iou(scored.boxes[qi, refs[r]], seqs[proto.references[refs[r]][0]].boxes[
            proto.references[refs[r]][1]]) for r in top if rel[r]}
        ious += tp_iou.values()
        for b, _, _ in BUCKETS:
            in_b = ref_bucket[refs] == b
            aps, b_ious, b_refs = per_bucket[b]
            if not (rel & in_b).any():
                continue
            # this bucket's true positives only: the others are left out of the ranking
            mask = ~(rel & ~in_b)
            for k, kk in (("ap@50", 50), ("ap@100", 100), ("ap@all", None)):
                aps[names[k]].append(average_precision(s[mask], (rel & in_b)[mask], kk))
            b_ious += [v for r, v in tp_iou.items() if ref_bucket[r] == b]
            b_refs.update(int(r) for r in refs[rel & in_b])
    result = _summary(overall, ious)
    result["regions_per_frame"] = round(scored.regions_per_frame, 2)
    result["frames_per_s"] = round(scored.frames_per_s, 3)
    result["refine_ms_per_frame"] = None if scored.refine_ms is None else round(scored.refine_ms, 1)
    result["rerank_ms_per_frame"] = None if scored.rerank_ms is None else round(scored.rerank_ms, 1)
    result["buckets"] = {b: {**_summary(aps, b_ious), "queries": len(aps["map@all"]), "references": len(b_refs)}
                         for b, (aps, b_ious, b_refs) in per_bucket.items()}
    result["per_query"] = per_query
    return result


DEFAULT_METHODS = ("dasr", "dasr*", "dasr-m", "dasr-m*", "dasr:official", "dasr*:official", "mac", "spoc", "rmac", "crow")


def evaluate(data: str | Path, methods: list[str] | None = None, preset: str = "default", device: str = "auto",
             stride: int = 4, queries: str = "first", max_frames: int | None = None, batch: int = 4,
             progress=None, protocol: str = "tracking", query_mode: str = "frame",
             cache_dir: str | Path | None = None) -> dict:
    """Run the protocol; `progress(method, total)` returns a callback taking a frame count."""
    from .dasr.engine import resolve_device

    specs = [MethodSpec.parse(m) for m in (methods or DEFAULT_METHODS)]
    base = load_preset(preset)
    seqs = load_sequences(data)
    proto = make_protocol(seqs, stride, queries, max_frames, protocol, query_mode)
    dev = str(resolve_device(device))
    cache: dict = {"dir": cache_dir} if cache_dir else {}
    results = {}
    for spec in specs:
        tick = progress(spec.name, len(proto.references)) if progress else None
        if spec.base in BASELINES:
            scored = run_baseline(spec.base, base, seqs, proto, dev, batch, cache, tick, spec.whiten is not False)
        else:
            scored = run_region_method(spec, base, seqs, proto, dev, batch, cache, tick)
        results[spec.name] = metrics(scored, seqs, proto)
    return {"data": str(Path(data).resolve()), "preset": base.name, "device": dev,
            "protocol": {"kind": protocol, "query_mode": query_mode, "stride": stride,
                         "queries": len(proto.queries), "references": len(proto.references),
                         "sequences": len(seqs), "max_frames": max_frames},
            "methods": results}
