"""The FAISS index: a cache of every readable video's region vectors, ids (video_id << 32) | row.
When `index/manifest.json` no longer matches the catalog, the cached index is brought up to date
in place (the regions of removed or changed videos taken out, those of new ones added) while its
coarse quantiser still fits the library; otherwise it is rebuilt (and retrained) from the shards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Preset
from ..dasr.whitening import Whitening
from .files import atomic_path
from .shards import Shards

# 2: IVF indexes hold the region ids themselves instead of sitting in an IndexIDMap2, whose
# remove_ids renumbers the positions IVF lists keep; caches of layout 1 are still searched, but
# the first writer that needs a change rebuilds them.
LAYOUT = 2
# An IVF index is retrained once the regions added since its training pass this multiple of the
# regions it was trained on: its lists were sized for that library and its centroids fitted to it.
RETRAIN_GROWTH = 3


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


def sample_region_ids(counts: dict[int, int], n: int, seed: int = 0) -> np.ndarray:
    """Up to n distinct region ids drawn uniformly from videos holding counts[video_id] regions."""
    vids = np.array(sorted(counts), dtype=np.int64)
    sizes = np.array([counts[v] for v in vids], dtype=np.int64)
    total = int(sizes.sum())
    pos = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    ends = np.cumsum(sizes)
    which = np.searchsorted(ends, pos, side="right")
    rows = pos - (ends[which] - sizes[which])
    return (vids[which] << np.int64(32)) | rows


def is_exact(index) -> bool:
    """Whether the index holds exact vectors (flat) rather than IVF codes."""
    import faiss

    return faiss.try_extract_index_ivf(index) is None


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


def ivf_nlist(total: int) -> int:
    """Inverted lists for a library of `total` regions: about 4 sqrt(total)."""
    return int(min(65536, max(16, 4 * np.sqrt(total))))


def training_size(total: int) -> int:
    """Vectors an IVF of ivf_nlist(total) lists is trained on (64 per list, at least 100k)."""
    return min(total, max(64 * ivf_nlist(total), 100_000))


def ivf_factory(kind: str, dim: int, total: int, preset: Preset | None) -> str:
    """The FAISS factory string of the IVF a library of `total` regions gets."""
    codes = "SQ8" if kind == "ivf" else f"PQ{pq_subquantizers(dim, preset.pq_bytes if preset else 64)}"
    return f"IVF{ivf_nlist(total)},{codes}"


def empty_index(kind: str, dim: int, total: int, train: np.ndarray | None = None, preset: Preset | None = None):
    """An index for `total` regions, ready for add_with_ids: IndexIDMap2(IndexFlatIP) for flat;
    for ivf (8-bit scalar codes) and ivfpq (about pq_bytes per region) an IVF trained on `train`
    that keeps the ids itself, so a video's regions can be removed in place."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, ivf_factory(kind, dim, total, preset), faiss.METRIC_INNER_PRODUCT)
    index.train(train)
    return index


@dataclass
class IndexState:
    """What a cached index holds: the manifest's content, less the file name."""
    whitening: int
    videos: dict[str, int]  # str(video_id) -> regions
    kind: str
    trained_on: int = 0  # regions in the library when the IVF was trained (0: flat)
    added_since: int = 0  # regions added in place since then
    layout: int = LAYOUT

    def to_json(self) -> dict:
        return dict(self.__dict__)


def build_index(shards: Shards, videos, w: Whitening | None, preset: Preset | None):
    """(index, IndexState) of every video's regions from the shards: exact inner product
    (IndexFlatIP) below the preset's ivf_min_regions, IVF with 8-bit scalar codes below
    pq_min_regions, IVF with product-quantised codes past it (or what the preset asks for).
    Search re-scores the approximate hits exactly from the shards."""
    total = sum(v.regions for v in videos)
    kind = index_kind(total, preset)
    train = _sample_vectors(shards, videos, w, training_size(total)) if kind != "flat" else None
    index = None
    for v in videos:
        vec = vectors_of(shards, v.id, w)
        if index is None:
            index = empty_index(kind, vec.shape[1], total, train, preset)
        if len(vec):
            index.add_with_ids(np.ascontiguousarray(vec), region_ids(v.id, len(vec)))
    wanted = manifest_wanted(videos, w)
    return index, IndexState(wanted["whitening"], wanted["videos"], kind, trained_on=total if kind != "flat" else 0)


def _update_plan(cached: dict, wanted: dict, kind: str) -> tuple[list[int], list[int], int] | None:
    """(videos to take out, videos to add, regions added) to bring a cached index of manifest
    `cached` to `wanted`, or None when it must be rebuilt: another layout, whitening or index
    kind, or an IVF that has taken in RETRAIN_GROWTH times the regions it was trained on."""
    if cached.get("layout") != LAYOUT or cached.get("whitening") != wanted["whitening"] or cached.get("kind") != kind:
        return None
    old, new = cached.get("videos", {}), wanted["videos"]
    remove = [int(v) for v, n in old.items() if new.get(v) != n]
    add = [int(v) for v, n in new.items() if old.get(v) != n]
    added = cached.get("added_since", 0) + sum(new[str(v)] for v in add)
    if kind != "flat" and added > RETRAIN_GROWTH * cached.get("trained_on", 0):
        return None
    return remove, add, added


def _read(index_dir: Path, cached: dict, mapped: bool = False):
    """The cached index, or None. `mapped`: an IVF's lists stay in the file, mapped read-only,
    so a search reads only the lists it probes instead of loading the whole index (GBs at
    archive size); such an index must not be added to (FAISS aborts the process)."""
    import faiss

    flags = faiss.IO_FLAG_MMAP if mapped and cached.get("kind") in ("ivf", "ivfpq") else 0
    try:
        return faiss.read_index(str(index_dir / cached["file"]), flags)
    except Exception:
        return None  # missing or corrupt: the caller rebuilds it


def current_index(index_dir: Path, shards: Shards, videos, w: Whitening | None, preset: Preset | None):
    """(index, state, file): the cached index, None and its file name when it holds `videos`
    with whitening `w`; else the cache brought up to date in place where it can be (the regions
    of removed or changed videos taken out, those of new ones added), or a fresh build; with the
    IndexState to save and no file."""
    import faiss

    wanted = manifest_wanted(videos, w)
    cached = read_manifest(index_dir) or {}
    if "file" in cached and cached.get("whitening") == wanted["whitening"] and cached.get("videos") == wanted["videos"]:
        index = _read(index_dir, cached, mapped=True)  # only searched from here on
        if index is not None:
            return index, None, cached["file"]
    kind = index_kind(sum(v.regions for v in videos), preset)
    plan = _update_plan(cached, wanted, kind) if "file" in cached else None
    index = _read(index_dir, cached) if plan is not None else None
    if index is None:
        return (*build_index(shards, videos, w, preset), None)
    remove, add, added = plan
    if remove:
        gone = np.concatenate([region_ids(v, cached["videos"][str(v)]) for v in remove])
        index.remove_ids(faiss.IDSelectorBatch(gone))
    for vid in add:
        vec = vectors_of(shards, vid, w)
        if len(vec):
            index.add_with_ids(np.ascontiguousarray(vec), region_ids(vid, len(vec)))
    return index, IndexState(wanted["whitening"], wanted["videos"], kind, cached.get("trained_on", 0), added), None


def save_index(index_dir: Path, index, state: IndexState, background: np.ndarray | None = None) -> None:
    """Write the index (and, for an IVF, its background sample) under a name of its content,
    then the manifest naming it; remove the files of earlier indexes."""
    import faiss

    index_dir.mkdir(exist_ok=True)
    content = state.to_json()
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{digest}.faiss"
    with atomic_path(index_dir / name) as tmp:
        faiss.write_index(index, str(tmp))
    if background is not None:
        save_background(index_dir, name, background)
    with atomic_path(index_dir / "manifest.json") as tmp:
        tmp.write_text(json.dumps({**content, "file": name}))
    keep = {name, _background_name(name)}
    for old in [*index_dir.glob("*.faiss"), *index_dir.glob("*.background.npy")]:
        if old.name not in keep:
            try:
                old.unlink(missing_ok=True)
            except OSError:
                pass  # still mapped by a reader where that forbids removal: the next save removes it


def _exact_rows(shards: Shards, w: Whitening | None, ids: np.ndarray):
    """(positions in ids, their vectors as the index holds them) per video, reading only the
    rows wanted of each shard."""
    vids = ids >> 32
    for vid in np.unique(vids):
        sel = np.nonzero(vids == vid)[0]
        desc = shards.desc_rows(int(vid), ids[sel] & 0xFFFFFFFF).astype(np.float32)
        yield sel, (w.apply(desc) if w is not None else desc)


def exact_scores(shards: Shards, w: Whitening | None, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Scores of regions recomputed from the stored descriptors (re-scoring IVF hits)."""
    out = np.empty(len(ids), dtype=np.float32)
    for sel, vec in _exact_rows(shards, w, ids):
        out[sel] = vec @ q
    return out


def exact_vectors(shards: Shards, w: Whitening | None, ids: np.ndarray) -> np.ndarray:
    """The vectors of regions as the index holds them, exact, from the shards."""
    out = None
    for sel, vec in _exact_rows(shards, w, ids):
        out = np.empty((len(ids), vec.shape[1]), dtype=np.float32) if out is None else out
        out[sel] = vec
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


# find's automatic threshold scores each query against a fixed uniform sample of the library's
# regions (search.background_stats). For an IVF the exact vectors come from the shards: random
# rows of many files, random disk reads once the shards outgrow memory (every query, 20,000 rows).
# So the sample is drawn when the index is saved and kept beside it, read in one piece.
BACKGROUND = 20_000


def draw_background(shards: Shards, w: Whitening | None, counts: dict[int, int]) -> np.ndarray:
    """The exact vectors of BACKGROUND regions drawn uniformly (always the same draw for the same
    videos), from the shards."""
    return exact_vectors(shards, w, sample_region_ids(counts, BACKGROUND, seed=0))


def _background_name(index_file: str) -> str:
    return index_file.removesuffix(".faiss") + ".background.npy"


def save_background(index_dir: Path, index_file: str, background: np.ndarray) -> None:
    """Store the background sample of an index file beside it."""
    with atomic_path(index_dir / _background_name(index_file)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(background, dtype=np.float32))


def read_background(index_dir: Path, index_file: str, counts: dict[int, int], dim: int) -> np.ndarray | None:
    """The background stored with an index file, or None where it is missing or does not fit."""
    try:
        vec = np.load(index_dir / _background_name(index_file))
    except Exception:
        return None
    want = (min(BACKGROUND, sum(counts.values())), dim)
    return vec if vec.shape == want and vec.dtype == np.float32 else None
