"""The library directory as one object: it ties the catalog, the shards, whitening, the FAISS
cache and the writer lock together so every write keeps them consistent.

Layout:
    catalog.sqlite        schema version, preset, videos (rows marked done only when their shard is)
    shards/v<ID>.npz      per video: sampled frames, regions and raw descriptors (shards.py)
    whitening.npz         PCA-whitening learned from the library's own regions, versioned
    index/manifest.json   which videos (id -> regions; ids are never reused) and whitening version
                          the FAISS file holds, its kind and how much it has grown since training
    index/<digest>.faiss  IndexIDMap2(IndexFlatIP), IVF-SQ8 or IVF-PQ, ids (video_id << 32) | row:
                          a cache, updated in place as videos come and go (faiss_index.py)
    index/<digest>.background.npy
                          for an IVF, the exact vectors of the fixed sample of regions find's
                          automatic threshold scores each query against (drawn from the shards)
    write.lock            one writer at a time
    parts/<run>/          pieces of shards written by Ray workers (ray_index.py) until the writer
                          that started them joins and commits them; any left are a dead run's

Every file is written to a temporary name, fsynced and renamed into place. An interrupted
`index` leaves a 'pending' catalog row, removed with its shard by the next writer.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import Preset
from ..dasr.whitening import Whitening
from ..errors import LibraryError
from . import faiss_index
from .catalog import CATALOG, Catalog, VideoRow
from .lock import WriterLock
from .shards import SHARD_FIELDS, Shards
from .whitening_store import load_whitening, maybe_fit_whitening


def library_root(root: str | Path | None = None) -> Path:
    """The library directory meant: the one given, else the default."""
    return Path(root) if root else default_library()


def default_library() -> Path:
    env = os.environ.get("VIDSEARCH_LIBRARY")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("vidsearch")) / "library"


class Library:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = Shards(root / "shards")
        self.index_dir = root / "index"
        self._catalog: Catalog | None = None
        self._lock = WriterLock(root)
        self.index_whitening: Whitening | None = None  # what the index load_index returned was built with
        self.index_regions: dict[int, int] = {}  # and the regions of each video it holds
        self._background: np.ndarray | None = None  # and its background sample (an IVF's)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path | None = None, create: bool = False) -> "Library":
        root = library_root(root)
        lib = cls(root)
        catalog = root / CATALOG
        if not catalog.is_file():
            if root.exists() and not root.is_dir():
                raise LibraryError(f"{root} is a file, not a library directory: choose another --library")
            if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
                raise LibraryError(
                    f"{root} is not a vidsearch library (no {CATALOG}) and is not empty: "
                    "choose an empty or new directory for --library")
            if not create:
                raise LibraryError(f"no library at {root}: index a video first (vidsearch index VIDEO --library {root})")
            root.mkdir(parents=True, exist_ok=True)
        lib._catalog = Catalog(catalog)
        return lib

    @property
    def catalog(self) -> Catalog:
        assert self._catalog is not None
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
        self._lock.release()

    # ------------------------------------------------------------------ locking
    @contextmanager
    def writer(self, wait: float = 0.0) -> Iterator["Library"]:
        self._lock.acquire(wait)
        try:
            self.recover()
            yield self
        finally:
            self._lock.release()

    def _require_writer(self) -> None:
        if not self._lock.held:
            raise AssertionError("library writes need the writer lock")

    # ------------------------------------------------------------------ meta / preset
    def meta(self, key: str, default: str | None = None) -> str | None:
        return self.catalog.meta(key, default)

    def preset(self) -> Preset | None:
        return self.catalog.preset()

    def check_preset(self, preset: Preset) -> None:
        mine = self.preset()
        if mine is None or mine.fingerprint() == preset.fingerprint():
            return
        if mine.name == preset.name:
            raise LibraryError(
                f"library {self.root} was built with an earlier version of preset {mine.name!r}: leave out "
                f"--preset to keep indexing and searching it as it is, or index into a new --library to use "
                f"today's {preset.name!r}")
        raise LibraryError(
            f"library {self.root} was built with preset {mine.name!r} ({mine.backbone}), which does "
            f"not match {preset.name!r} ({preset.backbone}): use --preset {mine.name} or another --library")

    def adopt_preset(self, preset: Preset) -> None:
        self._require_writer()
        self.check_preset(preset)
        if self.meta("preset") is None:
            self.catalog.set_preset(preset)

    # ------------------------------------------------------------------ videos
    def videos(self, status: str = "done") -> list[VideoRow]:
        return self.catalog.videos(status)

    def video(self, video_id: int) -> VideoRow | None:
        return self.catalog.video(video_id)

    def find_video(self, path: Path | None = None, key: str | None = None) -> VideoRow | None:
        return self.catalog.find_video(path, key)

    def begin_video(self, path: Path, key: str, info, original: str | None = None) -> int:
        """A pending row: its id names the shard; it counts only once commit_video marks it done.
        `original`: where the video is a proxy, its original (proxies.Original as JSON)."""
        self._require_writer()
        return self.catalog.add_pending(path, key, info, original)

    def set_original(self, video_id: int, original: str | None) -> None:
        """Record (or clear) the camera original of an indexed proxy; its regions stay as they are."""
        self._require_writer()
        self.catalog.set_original(video_id, original)

    def shard_path(self, video_id: int) -> Path:
        return self.shards.path(video_id)

    def commit_video(self, video_id: int, arrays: dict[str, np.ndarray], has_pts: bool, note: str = "",
                     replaces: int | None = None) -> None:
        """Write the shard atomically, then mark the row done (and drop the row it replaces)
        in one transaction."""
        self._require_writer()
        path = self.shards.write(video_id, arrays)
        try:
            self.catalog.mark_done(video_id, len(arrays["sample_frame"]), len(arrays["frame"]), has_pts, note,
                                   replaces)
        except LibraryError:
            path.unlink(missing_ok=True)
            raise
        if replaces is not None:
            self.shards.path(replaces).unlink(missing_ok=True)

    def parts_dir(self, run: str) -> Path:
        """A fresh folder for the shard pieces of one distributed run (see ray_index.py)."""
        self._require_writer()
        path = self.root / "parts" / run
        path.mkdir(parents=True)
        return path

    def drop_parts(self) -> None:
        """Remove every run's pieces: only the one writer's run can be using them."""
        self._require_writer()
        shutil.rmtree(self.root / "parts", ignore_errors=True)

    def remove_video(self, video_id: int) -> None:
        self._require_writer()
        self.catalog.delete(video_id)
        self.shards.path(video_id).unlink(missing_ok=True)

    def recover(self) -> list[str]:
        """Drop what an interrupted writer left: pending rows, their shards, temporary files."""
        self._require_writer()
        notes = [f"dropped an unfinished index of {path}" for path in self.catalog.drop_pending()]
        done = {v.id for v in self.videos()}
        for d in (self.root, self.shards.dir, self.index_dir):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
        self.drop_parts()  # pieces of a run that died before its commit
        for vid in self.shards.ids_on_disk():
            if vid not in done:
                self.shards.path(vid).unlink(missing_ok=True)
        return notes

    # ------------------------------------------------------------------ shards
    def load_shard(self, video_id: int, fields: tuple[str, ...] = SHARD_FIELDS) -> dict[str, np.ndarray]:
        return self.shards.load(video_id, fields)

    def readable_videos(self) -> tuple[list[VideoRow], list[tuple[VideoRow, str]]]:
        """Videos whose shard reads, and the ones reported and skipped. Every find and status
        asks this, so it reads shard headers only."""
        good, bad = [], []
        for v in self.videos():
            try:
                if self.shards.rows(v.id) != v.regions:
                    raise ValueError("row count differs from the catalog")
                good.append(v)
            except FileNotFoundError:
                bad.append((v, "the file is missing"))
            except Exception as exc:
                bad.append((v, f"not a valid shard: {type(exc).__name__}"))
        return good, bad

    # ------------------------------------------------------------------ whitening
    def whitening(self) -> Whitening | None:
        return load_whitening(self.root)

    # ------------------------------------------------------------------ FAISS cache
    def index_state(self) -> tuple[bool, int]:
        """(whether the cached index matches the readable videos and whitening, its size in bytes)."""
        good, _ = self.readable_videos()
        manifest = faiss_index.read_manifest(self.index_dir) or {}
        index_file = self.index_dir / manifest.get("file", "-")
        wanted = faiss_index.manifest_wanted(good, self.whitening())
        current = all(manifest.get(k) == wanted[k] for k in ("videos", "whitening"))
        return current, index_file.stat().st_size if index_file.is_file() else 0

    def exact_scores(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Exact scores of indexed regions, whitened as the loaded index is (call load_index first)."""
        return faiss_index.exact_scores(self.shards, self.index_whitening, ids, q)

    def load_index(self, save: bool = False):
        """The FAISS index of every readable video, for searching: the cache when it is current
        (an IVF's lists mapped from the file, not loaded), else the cache brought up to date in
        place or rebuilt from the shards (faiss_index.current_index), and saved when this
        process is the writer. For an IVF, `background()` then gives its background sample."""
        videos, _ = self.readable_videos()
        self._background = None
        if not videos:
            return None, videos
        w = self.whitening()
        # A writer may refit whitening.npz while a reader searches: queries and exact re-scoring
        # must use the whitening this index was built with, not a later read of the file.
        self.index_whitening = w
        self.index_regions = {v.id: v.regions for v in videos}
        index, state, name = faiss_index.current_index(self.index_dir, self.shards, videos, w, self.preset())
        if not faiss_index.is_exact(index):
            if name is not None:
                self._background = faiss_index.read_background(self.index_dir, name, self.index_regions, index.d)
            if self._background is None:
                self._background = faiss_index.draw_background(self.shards, w, self.index_regions)
                if name is not None and save and self._lock.held:  # a cache saved before samples were stored
                    faiss_index.save_background(self.index_dir, name, self._background)
        if state is not None and save and self._lock.held:
            faiss_index.save_index(self.index_dir, index, state, self._background)
        return index, videos

    def background(self) -> np.ndarray | None:
        """The exact vectors of a fixed uniform sample of the regions of the IVF load_index
        returned (what find's automatic threshold scores a query against), None for a flat one."""
        return self._background

    def verify(self) -> list[str]:
        """Invariants a crash must never break; returns what is wrong (empty = consistent)."""
        done = self.videos()
        problems = [p for v in done for p in self.shards.check(v.id, v.regions, v.frames)]
        paths = [v.path for v in done]
        if len(paths) != len(set(paths)):
            problems.append("a path is indexed twice")
        return problems

    def refresh(self, preset: Preset) -> None:
        """After writes: fit or refit whitening if due, then bring the FAISS cache up to date."""
        self._require_writer()
        videos, _ = self.readable_videos()
        maybe_fit_whitening(self.root, self.shards, videos, preset)
        self.load_index(save=True)
