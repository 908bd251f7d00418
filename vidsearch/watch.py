"""Watch folders: index videos as they appear or change, once they have stopped growing.

A file counts as ready when its size and modification time are the same in two looks at least
`settle` seconds apart (a camera card being copied, an export being written, a download are all
still growing before that). Ready files go through the normal `index` (unchanged ones are skipped
there, changed ones re-indexed); with `remove_deleted`, videos of the library that lay under a
watched folder and are gone from disk are removed from the library.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .errors import InputError
from .proxies import VIDEO_EXTENSIONS, check_dirs

Snapshot = dict[Path, tuple[int, float]]


def snapshot(dirs: list[Path]) -> Snapshot:
    """Size and mtime of every video file under `dirs` (hidden files skipped: partial copies)."""
    out: Snapshot = {}
    for d in dirs:
        for p in d.rglob("*"):
            if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".") and p.is_file():
                try:
                    st = p.stat()
                except OSError:  # removed while we looked
                    continue
                out[p.resolve()] = (st.st_size, st.st_mtime)
    return out


def settled(before: Snapshot, after: Snapshot) -> list[Path]:
    """Files seen unchanged (and not empty) in both looks."""
    return sorted(p for p, v in after.items() if before.get(p) == v and v[0] > 0)


def watch(dirs: list[str], index_fn: Callable[[list[str]], object], remove_fn: Callable[[list[str]], object],
          library_videos: Callable[[], list[str]], settle: float = 5.0, interval: float = 10.0,
          remove_deleted: bool = False, once: bool = False, log: Callable[[str], None] = print) -> None:
    """Poll `dirs` every `interval` seconds (or one round with `once`): index settled files
    whose size or time changed since they were last handed over, and (with `remove_deleted`)
    drop library videos under `dirs` that no longer exist."""
    roots = check_dirs(dirs, "{}: not a folder (watch takes folders to watch)")
    if settle < 0 or interval <= 0:
        raise InputError("--settle must be >= 0 and --interval > 0 seconds")
    handed: Snapshot = {}
    before = snapshot(roots)
    while True:
        time.sleep(settle)
        after = snapshot(roots)
        ready = [p for p in settled(before, after) if handed.get(p) != after[p]]
        growing = sorted(set(after) - set(ready) - {p for p in after if handed.get(p) == after[p]})
        for p in growing:
            log(f"waiting for {p.name}: still being written")
        if ready:
            log(f"indexing {len(ready)} new or changed file(s)")
            index_fn([str(p) for p in ready])
            handed.update({p: after[p] for p in ready})
        if remove_deleted:
            gone = [v for v in library_videos()
                    if any(Path(v).is_relative_to(r) for r in roots) and not Path(v).exists()]
            if gone:
                log(f"removing {len(gone)} deleted file(s) from the library")
                remove_fn(gone)
        if once:
            return
        time.sleep(max(0.0, interval - settle))
        before = after
