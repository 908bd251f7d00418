"""Play a hit: open segment N of a result in mpv or ffplay at its start (or best) time."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import InputError

# The players tried, in order, and how each is told where to start.
PLAYERS = {
    "mpv": lambda video, t: ["mpv", f"--start={t:.3f}", "--force-window=yes", video],
    "ffplay": lambda video, t: ["ffplay", "-hide_banner", "-loglevel", "error", "-ss", f"{t:.3f}", video],
}


def play_command(source, n: int, start: str = "start", player: str | None = None) -> list[str]:
    """The command that plays segment `n` (1-based) of a find result from its start or best hit."""
    from .export import load_result

    data = load_result(source)
    segs = data["segments"]
    if not segs:
        raise InputError("the result has no segments to play")
    if not 1 <= n <= len(segs):
        raise InputError(f"segment {n} does not exist: the result has segments 1 to {len(segs)}")
    if start not in ("start", "best"):
        raise InputError(f"--from must be start or best, got {start!r}")
    seg = segs[n - 1]
    video = seg["video"]
    proxy = (seg.get("proxy") or {}).get("path")
    if not Path(video).is_file() and proxy and Path(proxy).is_file():
        video = proxy  # the camera original is offline: its proxy runs in step with it
    if not Path(video).is_file():
        raise InputError(f"{video} no longer exists: move it back, or index and search again")
    names = [player] if player else list(PLAYERS)
    for name in names:
        if name not in PLAYERS:
            raise InputError(f"unknown player {name!r}: use one of {', '.join(PLAYERS)}")
        path = shutil.which(name)
        if path:
            t = float(seg["start"] if start == "start" else seg["best"]["time"])
            return [path] + PLAYERS[name](video, t)[1:]
    raise InputError(f"no video player found: install mpv (apt install mpv / brew install mpv) or ffplay "
                     f"(part of FFmpeg), or open {video} at {seg.get('start_tc', seg['start'])} yourself")


def play(source, n: int, start: str = "start", player: str | None = None) -> int:
    """Run the player (until it is closed); returns its exit status."""
    return subprocess.run(play_command(source, n, start, player)).returncode
