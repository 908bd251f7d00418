"""Per-video shards (`shards/v<ID>.npz`): the sampled frames and the region table (frame, time,
box, score, level, kind) with raw L2-normalised descriptors as float16 — the truth the FAISS
index is rebuilt from."""

from __future__ import annotations

import mmap
import zipfile
from pathlib import Path

import numpy as np

from ..errors import LibraryError
from .files import atomic_path

REQUIRED_FIELDS = ("frame", "time", "box", "score", "desc", "sample_frame", "sample_time")
# Fields shards written before views existed lack: what they mean there (level 1, salient region).
OPTIONAL_FIELDS = {"level": np.int8(1), "kind": np.int8(0)}
SHARD_FIELDS = REQUIRED_FIELDS + tuple(OPTIONAL_FIELDS)
REGION_FIELDS = ("frame", "time", "box", "score", "desc", "level", "kind")  # one row per region
# Fields that may be absent, and then read as None: `shot_cut`, the sample positions that start a
# new shot (shots.py; absent where the video was indexed without shot detection).
MAYBE_FIELDS = ("shot_cut",)


class Shards:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, video_id: int) -> Path:
        return self.dir / f"v{video_id}.npz"

    def write(self, video_id: int, arrays: dict[str, np.ndarray]) -> Path:
        self.dir.mkdir(exist_ok=True)
        missing = set(REQUIRED_FIELDS) - set(arrays)
        assert not missing, missing
        arrays = {**{k: np.full(len(arrays["frame"]), v) for k, v in OPTIONAL_FIELDS.items()}, **arrays}
        path = self.path(video_id)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return path

    def load(self, video_id: int, fields: tuple[str, ...] = SHARD_FIELDS) -> dict[str, np.ndarray]:
        path = self.path(video_id)
        try:
            with np.load(path) as z:
                out = {k: z[k] if k in z.files else None for k in fields if k in MAYBE_FIELDS}
                out.update({k: z[k] for k in fields if k not in MAYBE_FIELDS and (k in z.files or k not in OPTIONAL_FIELDS)})
                rows = len(z["frame"]) if any(k not in out for k in fields) else 0
        except Exception as exc:
            raise LibraryError(f"shard of video {video_id} ({path.name}) is unreadable ({type(exc).__name__}): "
                               "run `vidsearch index` on that video again") from None
        for k in fields:
            if k not in out:
                out[k] = np.full(rows, OPTIONAL_FIELDS[k])
        return out

    def rows(self, video_id: int) -> int:
        """Rows of a shard's descriptors, from the .npy header alone (not the array)."""
        with zipfile.ZipFile(self.path(video_id)) as zf, zf.open("desc.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            return read_header(f)[0][0]

    def desc_rows(self, video_id: int, rows: np.ndarray) -> np.ndarray:
        """Some rows of a shard's descriptors, read alone: np.savez stores members uncompressed,
        so `desc.npy` is mapped where it lies in the zip and only the pages of those rows are
        read (exact re-scoring at archive size touches a few rows of many large shards)."""
        path = self.path(video_id)
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo("desc.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError("compressed member")
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)  # the member's local header: name and extra field lengths at 26
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("not a local file header")
                f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0)(f)
                offset = f.tell()
            if fortran or len(shape) != 2:
                raise ValueError("unexpected layout")
            desc = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
            mapped = getattr(desc, "_mmap", None)
            if mapped is not None and hasattr(mmap, "MADV_RANDOM") and len(rows) * 32 < shape[0]:
                # scattered rows: where the file is not in memory, each would otherwise fault in
                # the kernel's read-around window (128 KB here), 200x the row (bench/archive.py --cold)
                mapped.madvise(mmap.MADV_RANDOM)
            return np.array(desc[rows])
        except (KeyError, ValueError, OSError, zipfile.BadZipFile):
            return self.load(video_id, ("desc",))["desc"][rows]  # any other shard: read whole

    def check(self, video_id: int, regions: int, frames: int) -> list[str]:
        """What is wrong with one shard against its catalog row (empty = consistent)."""
        try:
            z = self.load(video_id)
        except LibraryError:
            return [f"video {video_id}: shard unreadable"]
        n = {k: len(z[k]) for k in SHARD_FIELDS}
        problems = []
        if len({n[k] for k in REGION_FIELDS}) != 1 or n["desc"] != regions:
            problems.append(f"video {video_id}: shard rows {n} do not match the catalog's {regions} regions")
        if n["sample_frame"] != frames:
            problems.append(f"video {video_id}: {n['sample_frame']} sampled frames, catalog says {frames}")
        return problems

    def ids_on_disk(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return [int(p.stem[1:]) for p in self.dir.glob("v*.npz") if p.stem[1:].isdigit()]
