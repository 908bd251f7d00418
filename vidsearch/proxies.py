"""Proxies: index light copies, get results on the camera originals.

An editor indexes proxies (small H.264 files made by the NLE or the DIT) and wants hits, EDLs and
markers that point at the originals: their path, reel, frame rate, frame size and start
timecode. `index --proxy-of DIR` finds each proxy's original in DIR by name (the proxy's name
with a proxy suffix such as `_proxy` removed, any extension) and records it; results then name
the original, with times unchanged (a proxy runs in step with its original) and boxes scaled to
the original's pixels, and keep the proxy for pictures.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError

# "clip_proxy.mp4", "clip-Proxy.mov", "clip.proxy.mp4", "clip_PROXY_1080.mp4" -> "clip"
_SUFFIX = re.compile(r"[._ -]proxy(?:[._ -]?\d+p?)?$", re.IGNORECASE)
VIDEO_EXTENSIONS = {".mov", ".mp4", ".m4v", ".mxf", ".mkv", ".avi", ".mts", ".m2ts", ".r3d", ".braw", ".crm",
                    ".webm", ".mpg", ".mpeg", ".dv", ".ts"}


@dataclass
class Original:
    """What results need of a proxy's original (stored as JSON with the proxy's catalog row)."""

    path: str
    fps: str
    width: int
    height: int
    duration: float
    start_tc: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str | None) -> "Original | None":
        return Original(**json.loads(text)) if text else None


def rescale_hit(hit: dict, sx: float, sy: float, fps: float) -> dict:
    """A hit (as in the JSON) in the frames of the other file of a proxy pair: its box scaled by
    (sx, sy), its frame number at that file's rate (the two run in step, so times stay)."""
    x1, y1, x2, y2 = (float(v) for v in hit["box"])
    return {**hit, "box": [round(x1 * sx, 1), round(y1 * sy, 1), round(x2 * sx, 1), round(y2 * sy, 1)],
            "frame": int(round(float(hit["time"]) * fps))}


def original_stem(proxy: Path) -> str:
    """The name the original has: the proxy's stem without its proxy suffix."""
    return _SUFFIX.sub("", proxy.stem) or proxy.stem


def find_original(proxy: Path, dirs: list[Path]) -> Path:
    """The one video in `dirs` (searched recursively) whose stem is the proxy's original stem."""
    stem = original_stem(proxy).lower()
    found = sorted({p.resolve() for d in dirs for p in d.rglob("*")
                    if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and p.stem.lower() == stem
                    and p.resolve() != proxy.resolve()})
    if not found:
        raise InputError(f"{proxy.name}: no original named {original_stem(proxy)}.* in "
                         f"{', '.join(str(d) for d in dirs)}: name proxies after their originals "
                         "(clip.mov -> clip_proxy.mp4) or index it without --proxy-of")
    if len(found) > 1:
        raise InputError(f"{proxy.name}: several originals match ({', '.join(str(p) for p in found)}): "
                         "give --proxy-of the one folder that holds it")
    return found[0]


def describe_original(proxy_info, path: Path) -> Original:
    """Probe the original and check it runs as long as its proxy (within a second)."""
    from .timecode import format_rate
    from .video import probe

    info = probe(path)
    if abs(info.duration - proxy_info.duration) > max(1.0, 0.01 * info.duration):
        raise InputError(f"{path.name} lasts {info.duration:.1f}s but its proxy {Path(proxy_info.path).name} "
                         f"{proxy_info.duration:.1f}s: is it the right original?")
    return Original(str(path), format_rate(info.fps), info.width, info.height, info.duration, info.start_tc)


def check_dirs(dirs: list[str], what: str = "--proxy-of {}: not a folder (give the folder that holds the "
               "originals)") -> list[Path]:
    """The folders, resolved; one that is not a folder is an error (`what`, with its name)."""
    out = []
    for d in dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise InputError(what.format(d))
        out.append(path.resolve())
    return out
