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
