"""The FAISS index: a cache of every readable video's region vectors, ids (video_id << 32) | row,
rebuilt from the shards whenever `index/manifest.json` does not match the catalog."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..config import Preset
from ..dasr.describe import Whitening
from .files import atomic_path
from .shards import Shards


def region_ids(video_id: int, n: int) -> np.ndarray:
    return (np.int64(video_id) << np.int64(32)) | np.arange(n, dtype=np.int64)


def manifest_wanted(videos, whitening: Whitening | None) -> dict:
    return {"whitening": whitening.version if whitening else 0,
            "videos": {str(v.id): v.regions for v in videos}}


def read_manifest(index_dir: Path) -> dict | None:
    try:
        return json.loads((index_dir / "manifest.json").read_text())
    except Exception:
        return None


def vectors_of(shards: Shards, video_id: int, whitening: Whitening | None) -> np.ndarray:
    desc = shards.load(video_id, ("desc",))["desc"].astype(np.float32)
    return whitening.apply(desc) if whitening is not None else desc


def _sample_vectors(shards: Shards, videos, w: Whitening | None, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = sum(v.regions for v in videos)
    parts = []
    for v in videos:
        vec = vectors_of(shards, v.id, w)
        take = min(len(vec), int(np.ceil(n * len(vec) / max(1, total))))
        if take:
            parts.append(vec[rng.choice(len(vec), take, replace=False)])
    return np.ascontiguousarray(np.concatenate(parts))


def index_kind(total: int, preset: Preset | None) -> str:
    """flat, ivf or ivfpq for a library of `total` regions (what `auto` means by size)."""
    kind = preset.index_type if preset else "flat"
    if kind == "auto":
        kind = "flat" if preset is None or total < preset.ivf_min_regions else \
            "ivf" if total < preset.pq_min_regions else "ivfpq"
    return kind if total >= 256 else "flat"  # too few to train a coarse quantiser


def pq_subquantizers(dim: int, code_bytes: int) -> int:
    """Sub-quantisers of 8 bits for about `code_bytes` per vector: the largest divisor of the
    dimension not above it."""
    return max(m for m in range(1, min(dim, code_bytes) + 1) if dim % m == 0)


def build_index(shards: Shards, videos, w: Whitening | None, preset: Preset | None):
    """Exact inner product (IndexFlatIP) by default; IVF with 8-bit scalar codes once the
    library passes the preset's ivf_min_regions, IVF with product-quantised codes (about
    pq_bytes per region) past pq_min_regions (or when the preset asks for either). Search
    re-scores the approximate hits exactly from the shards. All sit in an IndexIDMap2 so ids
    stay (video_id << 32) | row."""
    import faiss

    total = sum(v.regions for v in videos)
    kind = index_kind(total, preset)
    index = None
    if kind in ("ivf", "ivfpq"):
        nlist = int(min(65536, max(16, 4 * np.sqrt(total))))
        train = _sample_vectors(shards, videos, w, min(total, max(64 * nlist, 100_000)))
        codes = "SQ8" if kind == "ivf" else f"PQ{pq_subquantizers(train.shape[1], preset.pq_bytes if preset else 64)}"
        inner = faiss.index_factory(train.shape[1], f"IVF{nlist},{codes}", faiss.METRIC_INNER_PRODUCT)
        inner.train(train)
        index = faiss.IndexIDMap2(inner)
    for v in videos:
        vec = vectors_of(shards, v.id, w)
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(vec.shape[1]))
        if len(vec):
            index.add_with_ids(np.ascontiguousarray(vec), region_ids(v.id, len(vec)))
    return index


def read_cached(index_dir: Path, wanted: dict):
    """The cached index when its manifest matches `wanted` and it reads; else None."""
    import faiss

    manifest = read_manifest(index_dir)
    if manifest and manifest.get("whitening") == wanted["whitening"] and manifest.get("videos") == wanted["videos"]:
        try:
            return faiss.read_index(str(index_dir / manifest["file"]))
        except Exception:
            return None  # corrupt cache: the caller rebuilds it
    return None


def save_index(index_dir: Path, index, wanted: dict) -> None:
    import faiss

    index_dir.mkdir(exist_ok=True)
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{digest}.faiss"
    with atomic_path(index_dir / name) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(index_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps({**wanted, "file": name}))
    for old in index_dir.glob("*.faiss"):
        if old.name != name:
            old.unlink(missing_ok=True)


def exact_scores(shards: Shards, w: Whitening | None, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scores of regions recomputed from the stored descriptors (re-ranking after IVF-SQ8)."""
    out = np.empty(len(ids), dtype=np.float32)
    vids = ids >> 32
    for vid in np.unique(vids):
        sel = np.nonzero(vids == vid)[0]
        desc = shards.load(int(vid), ("desc",))["desc"][ids[sel] & 0xFFFFFFFF].astype(np.float32)
        vec = w.apply(desc) if w is not None else desc
        out[sel] = vec @ q
    return out
