"""The library directory: SQLite catalog + per-video shards (the truth), whitening, FAISS cache.

Layout:
    catalog.sqlite        schema version, preset, videos (rows marked done only when their shard is)
    shards/v<ID>.npz      per video: sampled frames, regions (frame, time, box, score) and raw
                          L2-normalised descriptors as float16
    whitening.npz         PCA-whitening learned from the library's own regions, versioned
    index/manifest.json   which videos and whitening version the FAISS file holds
    index/<digest>.faiss  IndexIDMap2(IndexFlatIP), ids (video_id << 32) | row — a cache
    write.lock            one writer at a time

Every file is written to a temporary name, fsynced and renamed into place. An interrupted
`index` leaves a 'pending' catalog row, removed with its shard by the next writer.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .config import Preset, preset_from_dict
from .dasr.describe import Whitening
from .errors import LibraryError, LockedError
from .timecode import format_rate

SCHEMA_VERSION = 1
CATALOG = "catalog.sqlite"
SHARD_FIELDS = ("frame", "time", "box", "score", "desc", "sample_frame", "sample_time")

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE videos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL,
            content_key TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            width INTEGER, height INTEGER, fps TEXT, duration REAL, frame_count INTEGER,
            codec TEXT, rotation INTEGER, has_pts INTEGER, start_tc TEXT,
            frames INTEGER DEFAULT 0, regions INTEGER DEFAULT 0,
            note TEXT DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending',
            indexed_at TEXT)""",
        "CREATE INDEX videos_path ON videos(path)",
        "CREATE INDEX videos_key ON videos(content_key)",
    ],
}


@dataclass
class VideoRow:
    id: int
    path: str
    content_key: str
    size: int
    mtime: float
    width: int
    height: int
    fps: str
    duration: float
    frame_count: int
    codec: str
    rotation: int
    has_pts: bool
    start_tc: str | None
    frames: int
    regions: int
    note: str
    status: str
    indexed_at: str | None


def default_library() -> Path:
    env = os.environ.get("VIDSEARCH_LIBRARY")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("vidsearch")) / "library"


def content_key(path: Path, block: int = 1 << 22) -> str:
    """Size + hashes of the first and last 4 MiB: cheap, and enough to tell files apart."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(block))
        if size > block:
            f.seek(max(block, size - block))
            h.update(f.read(block))
    return h.hexdigest()[:32]


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place.
    A full disk becomes a one-line LibraryError; the old file stays as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise LibraryError(f"no space left on the device while writing {path.name}: free some space "
                               "and run the command again (nothing committed was lost)") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def region_ids(video_id: int, n: int) -> np.ndarray:
    return (np.int64(video_id) << np.int64(32)) | np.arange(n, dtype=np.int64)


class Library:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.index_dir = root / "index"
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: str | Path | None = None, create: bool = False) -> "Library":
        root = Path(root) if root else default_library()
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
        lib._connect()
        return lib

    def _connect(self) -> None:
        try:
            db = sqlite3.connect(self.root / CATALOG, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"{self.root / CATALOG} is not a readable catalog ({exc}): restore it from a backup") from None
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"library {self.root} has schema version {version}, newer than this vidsearch "
                f"understands ({SCHEMA_VERSION}): upgrade vidsearch")
        if version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in _MIGRATIONS[v]:
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.release()

    # ------------------------------------------------------------------ locking
    def acquire(self, wait: float = 0.0) -> None:
        """Become the one writer, waiting up to `wait` seconds; otherwise say who holds it."""
        path = self.root / "write.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise LockedError(
                        f"library {self.root} is being written by {holder}: wait for it to finish, "
                        "or pass --wait SECONDS") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        cmd = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({cmd}) since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    @contextmanager
    def writer(self, wait: float = 0.0) -> Iterator["Library"]:
        self.acquire(wait)
        try:
            self.recover()
            yield self
        finally:
            self.release()

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise AssertionError("library writes need the writer lock")

    # ------------------------------------------------------------------ meta / preset
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def preset(self) -> Preset | None:
        text = self.meta("preset")
        return preset_from_dict(json.loads(text)) if text else None

    def check_preset(self, preset: Preset) -> None:
        mine = self.preset()
        if mine is not None and mine.fingerprint() != preset.fingerprint():
            raise LibraryError(
                f"library {self.root} was built with preset {mine.name!r} ({mine.backbone}), which does "
                f"not match {preset.name!r} ({preset.backbone}): use --preset {mine.name} or another --library")

    def adopt_preset(self, preset: Preset) -> None:
        self._require_writer()
        self.check_preset(preset)
        if self.meta("preset") is None:
            self.set_meta("preset", json.dumps(preset.to_dict()))
            self.set_meta("fingerprint", preset.fingerprint())

    # ------------------------------------------------------------------ videos
    def videos(self, status: str = "done") -> list[VideoRow]:
        rows = self.db.execute(f"SELECT {', '.join(VideoRow.__dataclass_fields__)} FROM videos "
                               "WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [VideoRow(*r) for r in rows]

    def video(self, video_id: int) -> VideoRow | None:
        row = self.db.execute(f"SELECT {', '.join(VideoRow.__dataclass_fields__)} FROM videos WHERE id = ?",
                              (video_id,)).fetchone()
        return VideoRow(*row) if row else None

    def find_video(self, path: Path | None = None, key: str | None = None) -> VideoRow | None:
        for v in self.videos():
            if (path is not None and v.path == str(path)) or (key is not None and v.content_key == key):
                return v
        return None

    def begin_video(self, path: Path, key: str, info) -> int:
        """A pending row: its id names the shard; it counts only once commit_video marks it done."""
        self._require_writer()
        st = path.stat()
        cur = self.db.execute(
            "INSERT INTO videos(path, content_key, size, mtime, width, height, fps, duration, frame_count, "
            "codec, rotation, has_pts, start_tc, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'pending')",
            (str(path), key, st.st_size, st.st_mtime, info.width, info.height,
             format_rate(info.fps), info.duration, info.frame_count,
             info.codec, info.rotation, int(info.has_pts), info.start_tc))
        return int(cur.lastrowid)

    def shard_path(self, video_id: int) -> Path:
        return self.shards / f"v{video_id}.npz"

    def commit_video(self, video_id: int, arrays: dict[str, np.ndarray], has_pts: bool, note: str = "",
                     replaces: int | None = None) -> None:
        """Write the shard atomically, then mark the row done (and drop the row it replaces)
        in one transaction."""
        self._require_writer()
        self.shards.mkdir(exist_ok=True)
        missing = set(SHARD_FIELDS) - set(arrays)
        assert not missing, missing
        path = self.shard_path(video_id)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            path.unlink(missing_ok=True)
            raise LibraryError(f"cannot commit to the catalog ({exc}): free disk space and run again") from None
        try:
            self.db.execute(
                "UPDATE videos SET status='done', frames=?, regions=?, has_pts=?, note=?, "
                "indexed_at=datetime('now') WHERE id=?",
                (len(arrays["sample_frame"]), len(arrays["frame"]), int(has_pts), note, video_id))
            if replaces is not None:
                self.db.execute("DELETE FROM videos WHERE id = ?", (replaces,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        if replaces is not None:
            self.shard_path(replaces).unlink(missing_ok=True)

    def remove_video(self, video_id: int) -> None:
        self._require_writer()
        self.db.execute("DELETE FROM videos WHERE id = ?", (video_id,))
        self.shard_path(video_id).unlink(missing_ok=True)

    def recover(self) -> list[str]:
        """Drop what an interrupted writer left: pending rows, their shards, temporary files."""
        self._require_writer()
        done = {v.id for v in self.videos()}
        notes = []
        pending = self.db.execute("SELECT id, path FROM videos WHERE status != 'done'").fetchall()
        for vid, path in pending:
            self.db.execute("DELETE FROM videos WHERE id = ?", (vid,))
            notes.append(f"dropped an unfinished index of {path}")
        for d in (self.root, self.shards, self.index_dir):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
        if self.shards.is_dir():
            for p in self.shards.glob("v*.npz"):
                if p.stem[1:].isdigit() and int(p.stem[1:]) not in done:
                    p.unlink(missing_ok=True)
        return notes

    # ------------------------------------------------------------------ shards
    def load_shard(self, video_id: int, fields: tuple[str, ...] = SHARD_FIELDS) -> dict[str, np.ndarray]:
        path = self.shard_path(video_id)
        try:
            with np.load(path) as z:
                return {k: z[k] for k in fields}
        except Exception as exc:
            raise LibraryError(f"shard of video {video_id} ({path.name}) is unreadable ({type(exc).__name__}): "
                               "run `vidsearch index` on that video again") from None

    def _shard_rows(self, video_id: int) -> int:
        """Rows of a shard's descriptors, from the .npy header alone (not the array)."""
        with zipfile.ZipFile(self.shard_path(video_id)) as zf, zf.open("desc.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            return read_header(f)[0][0]

    def readable_videos(self) -> tuple[list[VideoRow], list[tuple[VideoRow, str]]]:
        """Videos whose shard reads, and the ones reported and skipped. Every find and status
        asks this, so it reads shard headers only."""
        good, bad = [], []
        for v in self.videos():
            try:
                if self._shard_rows(v.id) != v.regions:
                    raise ValueError("row count differs from the catalog")
                good.append(v)
            except FileNotFoundError:
                bad.append((v, "the file is missing"))
            except Exception as exc:
                bad.append((v, f"not a valid shard: {type(exc).__name__}"))
        return good, bad

    # ------------------------------------------------------------------ whitening
    def whitening(self) -> Whitening | None:
        path = self.root / "whitening.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                return Whitening.from_arrays(z)
        except Exception:
            return None  # unreadable: refitted by the next writer

    def maybe_fit_whitening(self, preset: Preset, sample: int = 100_000, seed: int = 0) -> bool:
        """Learn whitening once the library has enough regions; refit when it has grown 4x."""
        self._require_writer()
        if not preset.whiten:
            return False
        videos, _ = self.readable_videos()
        total = sum(v.regions for v in videos)
        current = self.whitening()
        if total < preset.whiten_min_regions:
            return False
        if current is not None and total < 4 * current.fitted_on:
            return False
        rng = np.random.default_rng(seed)
        parts = []
        for v in videos:
            desc = self.load_shard(v.id, ("desc",))["desc"]
            take = min(len(desc), max(1, int(round(sample * len(desc) / total))))
            parts.append(desc[np.sort(rng.choice(len(desc), take, replace=False))].astype(np.float32))
        version = (current.version + 1) if current else 1
        w = Whitening.fit(np.concatenate(parts), dims=preset.whiten_dims, version=version)
        with atomic_path(self.root / "whitening.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **w.to_arrays())
        return True

    # ------------------------------------------------------------------ FAISS cache
    def _manifest_wanted(self, videos: list[VideoRow]) -> dict:
        w = self.whitening()
        return {"whitening": w.version if w else 0,
                "videos": {str(v.id): v.regions for v in videos}}

    def _read_manifest(self) -> dict | None:
        try:
            return json.loads((self.index_dir / "manifest.json").read_text())
        except Exception:
            return None

    def vectors_of(self, video_id: int, whitening: Whitening | None) -> np.ndarray:
        desc = self.load_shard(video_id, ("desc",))["desc"].astype(np.float32)
        return whitening.apply(desc) if whitening is not None else desc

    def build_index(self, videos: list[VideoRow]):
        """Exact inner product (IndexFlatIP) by default; IVF with 8-bit scalar codes once the
        library passes the preset's ivf_min_regions (or when the preset asks for it). Both sit
        in an IndexIDMap2 so ids stay (video_id << 32) | row."""
        import faiss

        w = self.whitening()
        preset = self.preset()
        total = sum(v.regions for v in videos)
        kind = preset.index_type if preset else "flat"
        use_ivf = kind == "ivf" or (kind == "auto" and preset is not None and total >= preset.ivf_min_regions)
        index = None
        if use_ivf and total >= 256:
            nlist = int(min(65536, max(16, 4 * np.sqrt(total))))
            train = self._sample_vectors(videos, w, min(total, max(64 * nlist, 100_000)))
            inner = faiss.index_factory(train.shape[1], f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
            inner.train(train)
            index = faiss.IndexIDMap2(inner)
        for v in videos:
            vec = self.vectors_of(v.id, w)
            if index is None:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(vec.shape[1]))
            if len(vec):
                index.add_with_ids(np.ascontiguousarray(vec), region_ids(v.id, len(vec)))
        return index

    def _sample_vectors(self, videos: list[VideoRow], w: Whitening | None, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        total = sum(v.regions for v in videos)
        parts = []
        for v in videos:
            vec = self.vectors_of(v.id, w)
            take = min(len(vec), int(np.ceil(n * len(vec) / max(1, total))))
            if take:
                parts.append(vec[rng.choice(len(vec), take, replace=False)])
        return np.ascontiguousarray(np.concatenate(parts))

    def exact_scores(self, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Scores of regions recomputed from the stored descriptors (re-ranking after IVF-SQ8)."""
        w = self.whitening()
        out = np.empty(len(ids), dtype=np.float32)
        vids = ids >> 32
        for vid in np.unique(vids):
            sel = np.nonzero(vids == vid)[0]
            desc = self.load_shard(int(vid), ("desc",))["desc"][ids[sel] & 0xFFFFFFFF].astype(np.float32)
            vec = w.apply(desc) if w is not None else desc
            out[sel] = vec @ q
        return out

    def load_index(self, save: bool = False):
        """The FAISS index of every readable video: from the cache when it is current, else
        rebuilt from the shards (and saved when this process is the writer)."""
        import faiss

        videos, _ = self.readable_videos()
        if not videos:
            return None, videos
        wanted = self._manifest_wanted(videos)
        manifest = self._read_manifest()
        if manifest and manifest.get("whitening") == wanted["whitening"] and manifest.get("videos") == wanted["videos"]:
            try:
                return faiss.read_index(str(self.index_dir / manifest["file"])), videos
            except Exception:
                pass  # corrupt cache: rebuilt below
        index = self.build_index(videos)
        if save and self._lock_fd is not None:
            self.save_index(index, wanted)
        return index, videos

    def save_index(self, index, wanted: dict) -> None:
        import faiss

        self._require_writer()
        self.index_dir.mkdir(exist_ok=True)
        digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{digest}.faiss"
        with atomic_path(self.index_dir / name) as tmp:
            faiss.write_index(index, str(tmp))
        with atomic_path(self.index_dir / "manifest.json") as tmp:
            tmp.write_text(json.dumps({**wanted, "file": name}))
        for old in self.index_dir.glob("*.faiss"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def verify(self) -> list[str]:
        """Invariants a crash must never break; returns what is wrong (empty = consistent)."""
        problems = []
        done = self.videos()
        for v in done:
            try:
                with np.load(self.shard_path(v.id)) as z:
                    n = {k: len(z[k]) for k in SHARD_FIELDS}
                if len({n["frame"], n["time"], n["box"], n["score"], n["desc"]}) != 1 or n["desc"] != v.regions:
                    problems.append(f"video {v.id}: shard rows {n} do not match the catalog's {v.regions} regions")
                if n["sample_frame"] != v.frames:
                    problems.append(f"video {v.id}: {n['sample_frame']} sampled frames, catalog says {v.frames}")
            except Exception as exc:
                problems.append(f"video {v.id}: shard unreadable ({type(exc).__name__})")
        paths = [v.path for v in done]
        if len(paths) != len(set(paths)):
            problems.append("a path is indexed twice")
        return problems

    def refresh(self, preset: Preset) -> None:
        """After writes: fit or refit whitening if due, then bring the FAISS cache up to date."""
        self._require_writer()
        self.maybe_fit_whitening(preset)
        self.load_index(save=True)
