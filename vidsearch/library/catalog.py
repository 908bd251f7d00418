"""The SQLite catalog: schema version with in-code migrations, meta (preset), and one row per
video ('pending' while it is being indexed, 'done' once its shard is in place)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..config import Preset, preset_from_dict
from ..errors import LibraryError
from ..timecode import format_rate

SCHEMA_VERSION = 2
CATALOG = "catalog.sqlite"

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
    # 2: a proxy's camera original (proxies.py), as JSON; NULL for a video indexed as itself
    2: ["ALTER TABLE videos ADD COLUMN original TEXT"],
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
    original: str | None = None  # JSON of proxies.Original where this video is a proxy


_COLUMNS = ", ".join(VideoRow.__dataclass_fields__)


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LibraryError(f"{path} is not a readable catalog ({exc}): restore it from a backup") from None
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"library {path.parent} has schema version {version}, newer than this vidsearch "
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
        self.db = db

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ meta / preset
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def preset(self) -> Preset | None:
        text = self.meta("preset")
        return preset_from_dict(json.loads(text)) if text else None

    def set_preset(self, preset: Preset) -> None:
        self.set_meta("preset", json.dumps(preset.to_dict()))
        self.set_meta("fingerprint", preset.fingerprint())

    # ------------------------------------------------------------------ videos
    def videos(self, status: str = "done") -> list[VideoRow]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM videos WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [VideoRow(*r) for r in rows]

    def video(self, video_id: int) -> VideoRow | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM videos WHERE id = ?", (video_id,)).fetchone()
        return VideoRow(*row) if row else None

    def find_video(self, path: Path | None = None, key: str | None = None) -> VideoRow | None:
        for v in self.videos():
            if (path is not None and v.path == str(path)) or (key is not None and v.content_key == key):
                return v
        return None

    def add_pending(self, path: Path, key: str, info, original: str | None = None) -> int:
        st = path.stat()
        cur = self.db.execute(
            "INSERT INTO videos(path, content_key, size, mtime, width, height, fps, duration, frame_count, "
            "codec, rotation, has_pts, start_tc, original, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,'pending')",
            (str(path), key, st.st_size, st.st_mtime, info.width, info.height,
             format_rate(info.fps), info.duration, info.frame_count,
             info.codec, info.rotation, int(info.has_pts), info.start_tc, original))
        return int(cur.lastrowid)

    def mark_done(self, video_id: int, frames: int, regions: int, has_pts: bool, note: str,
                  replaces: int | None = None) -> None:
        """Mark the row done (and drop the row it replaces) in one transaction."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LibraryError(f"cannot commit to the catalog ({exc}): free disk space and run again") from None
        try:
            self.db.execute(
                "UPDATE videos SET status='done', frames=?, regions=?, has_pts=?, note=?, "
                "indexed_at=datetime('now') WHERE id=?",
                (frames, regions, int(has_pts), note, video_id))
            if replaces is not None:
                self.db.execute("DELETE FROM videos WHERE id = ?", (replaces,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def set_original(self, video_id: int, original: str | None) -> None:
        self.db.execute("UPDATE videos SET original = ? WHERE id = ?", (original, video_id))

    def delete(self, video_id: int) -> None:
        self.db.execute("DELETE FROM videos WHERE id = ?", (video_id,))

    def drop_pending(self) -> list[str]:
        """Remove rows an interrupted writer left; returns their paths."""
        pending = self.db.execute("SELECT id, path FROM videos WHERE status != 'done'").fetchall()
        for vid, _ in pending:
            self.delete(vid)
        return [path for _, path in pending]
