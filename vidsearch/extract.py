"""From decoded frames to a video's shard: the one extraction step that plain `index` and the
Ray workers (ray_index.py) share, so both write the same regions for the same frames."""

from __future__ import annotations

import numpy as np

from .library import REGION_FIELDS
from .video import Frame, Sampler, VideoInfo


class ShardBuilder:
    """A video's regions, fed one batch of sampled frames at a time in frame order; boxes are
    moved from the decoded frames' pixels to the video's own."""

    def __init__(self, width: int, height: int, dim: int) -> None:
        self.width, self.height, self.dim = width, height, dim
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in REGION_FIELDS}
        self.sample_frame: list[int] = []
        self.sample_time: list[float] = []

    def add(self, engine, group: list[Frame]) -> None:
        """Extract the regions of one batch of frames (all one size) and keep them."""
        regions = engine.extract_views(np.stack([f.image for f in group]))
        fh, fw = group[0].image.shape[:2]
        scale = np.array([self.width / fw, self.height / fh] * 2, dtype=np.float32)
        self.sample_frame += [f.index for f in group]
        self.sample_time += [f.time for f in group]
        self.parts["frame"].append(np.array([group[j].index for j in regions.frame], dtype=np.int64))
        self.parts["time"].append(np.array([group[j].time for j in regions.frame], dtype=np.float64))
        self.parts["box"].append(regions.boxes * scale)
        self.parts["score"].append(regions.scores)
        self.parts["desc"].append(regions.vectors.astype(np.float16))
        self.parts["level"].append(regions.level)
        self.parts["kind"].append(regions.kind)

    @property
    def frames(self) -> int:
        return len(self.sample_frame)

    def arrays(self) -> dict[str, np.ndarray]:
        """The region table and the sampled frames, as the shard stores them."""
        empty = {"box": np.zeros((0, 4), np.float32), "desc": np.zeros((0, self.dim), np.float16)}
        out = {k: np.concatenate(v) if v else empty.get(k, np.zeros(0)) for k, v in self.parts.items()}
        out["sample_frame"] = np.array(self.sample_frame, dtype=np.int64)
        out["sample_time"] = np.array(self.sample_time, dtype=np.float64)
        return out


def join(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Consecutive pieces of one video's arrays (chunks, in order) as one."""
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def shard_notes(info: VideoInfo, sampler: Sampler, last_time: float, stopped_at: str | None) -> list[str]:
    """What the catalog should say about how a video decoded."""
    notes = []
    if not info.has_pts:
        notes.append("no usable timestamps: times are frame / fps")
    if stopped_at:
        notes.append(f"truncated: {stopped_at}")
    elif info.duration - last_time > max(2.0, 2.0 / (sampler.fps or 1.0)) and sampler.every_n is None:
        notes.append(f"decoding ended at {last_time:.1f}s of {info.duration:.1f}s (truncated file?)")
    return notes
