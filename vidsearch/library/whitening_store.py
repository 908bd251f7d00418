"""PCA-whitening learned from the library's own regions (`whitening.npz`, versioned): learned once
the library holds enough regions, refitted when it has grown 4×."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Preset
from ..dasr.whitening import Whitening
from .files import atomic_path
from .shards import Shards


def load_whitening(root: Path) -> Whitening | None:
    path = root / "whitening.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return Whitening.from_arrays(z)
    except Exception:
        return None  # unreadable: refitted by the next writer


def maybe_fit_whitening(root: Path, shards: Shards, videos, preset: Preset, sample: int = 100_000,
                        seed: int = 0) -> bool:
    """Learn whitening when due (see module doc); `videos` are the readable ones."""
    if not preset.whiten:
        return False
    total = sum(v.regions for v in videos)
    current = load_whitening(root)
    if total < preset.whiten_min_regions:
        return False
    if current is not None and total < 4 * current.fitted_on:
        return False
    rng = np.random.default_rng(seed)
    parts = []
    for v in videos:
        desc = shards.load(v.id, ("desc",))["desc"]
        take = min(len(desc), max(1, int(round(sample * len(desc) / total))))
        parts.append(desc[np.sort(rng.choice(len(desc), take, replace=False))].astype(np.float32))
    version = (current.version + 1) if current else 1
    w = Whitening.fit(np.concatenate(parts), dims=preset.whiten_dims, version=version)
    with atomic_path(root / "whitening.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **w.to_arrays())
    return True
