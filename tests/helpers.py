"""Small shared helpers for the tests (real photos from skimage.data)."""

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from skimage.data (grayscale ones are stacked to RGB)."""
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def photo_batch(name: str, long_side: int) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], long side resized to `long_side`."""
    x = torch.from_numpy(photo(name)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = long_side / max(h, w)
    return F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True)


def run(*args, ok: bool = True):
    """The real CLI, in process; with `ok`, it must succeed."""
    from typer.testing import CliRunner

    from vidsearch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def iou(a, b) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def commit_random_video(lib, key: str, n: int = 2000, dim: int = 64, seed: int = 0) -> tuple[int, np.ndarray]:
    """A committed video of n random unit regions (20 per sampled frame, 24 fps) in a library held
    for writing, without decoding anything; returns its id and its vectors as the shard stores them."""
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    desc = (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float16)
    return commit_regions(lib, key, desc), desc.astype(np.float32)


def commit_regions(lib, key: str, desc: np.ndarray) -> int:
    """A committed video of the given unit region vectors (20 per sampled frame, one sample a
    second at 24 fps, 100 s) in a library held for writing, without decoding anything; its id."""
    from fractions import Fraction
    from types import SimpleNamespace

    n = len(desc)
    info = SimpleNamespace(width=640, height=360, fps=Fraction(24), duration=100.0, frame_count=2400, codec="h264",
                           rotation=0, has_pts=True, start_tc=None)
    path = lib.root.parent / f"{key}.mp4"
    path.write_bytes(key.encode())
    frames = np.repeat(np.arange(n // 20 + 1) * 24, 20)[:n]
    samples = np.unique(frames)
    vid = lib.begin_video(path, key, info)
    lib.commit_video(vid, {"frame": frames, "time": frames / 24.0, "box": np.tile([0, 0, 10, 10], (n, 1)).astype(np.float32),
                           "score": np.ones(n, np.float32), "desc": desc.astype(np.float16), "sample_frame": samples,
                           "sample_time": samples / 24.0}, True)
    return vid
