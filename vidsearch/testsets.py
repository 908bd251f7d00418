"""Generated evaluation sets with known answers: real object photos pasted small, off-centre,
moving and partly hidden into real scenes, written as Instance-style sequences
(`<name>/img/000001.jpg`, `groundtruth.txt`, `meta.json`) so `vidsearch eval` reads them as it
reads tracking data.

Every object appears in several scenes at several sizes, so the same set serves the tracking
protocol (query and references share the scene) and the cross-scene protocol (the references
that count are the other scenes showing the same object; meta.json's "instance" names it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import skimage_photo

# name -> (skimage.data photo, crop y1, y2, x1, x2, round mask). Photos not listed in SCENE_PHOTOS.
OBJECTS = {
    "cup": ("coffee", 10, 395, 70, 485, False),
    "rocket": ("rocket", 0, 427, 200, 420, False),
    "cat": ("chelsea", 0, 300, 60, 340, False),
    "motorcycle": ("stereo_motorcycle", 60, 395, 100, 605, False),
    "logo": ("logo", 15, 485, 15, 485, True),
    "astronaut": ("astronaut", 20, 220, 150, 330, False),
}
SCENE_PHOTOS = ("camera", "hubble_deep_field", "retina", "immunohistochemistry", "brick", "grass", "gravel",
                "moon", "coins", "page", "text", "cell", "colorwheel", "clock")


def _photo(name: str) -> np.ndarray:
    if name == "stereo_motorcycle":
        from skimage import data

        return np.ascontiguousarray(data.stereo_motorcycle()[0][..., :3])
    return skimage_photo(name)


def object_image(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels and its alpha mask (1 inside the object)."""
    src, y1, y2, x1, x2, rounded = OBJECTS[name]
    img = _photo(src)[y1:y2, x1:x2].copy()
    alpha = np.ones(img.shape[:2], dtype=np.float32)
    if rounded:
        h, w = alpha.shape
        yy, xx = np.mgrid[:h, :w]
        alpha = (((yy - h / 2 + 0.5) / (h / 2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2)) ** 2 <= 1.0).astype(np.float32)
    return img, alpha


def collage(names: list[str], size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A scene made of real photos: a 2×2 arrangement of photos (cut at random points so the
    seams fall off-centre), each scaled to cover its part; returned at (w, h)."""
    w, h = size
    rng = np.random.default_rng(seed)
    cx, cy = int(w * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7))
    out = np.zeros((h, w, 3), dtype=np.uint8)
    cells = [(0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h)]
    for (x1, y1, x2, y2), name in zip(cells, names):
        out[y1:y2, x1:x2] = _cover(_photo(name), x2 - x1, y2 - y1)
    return out


def _cover(img: np.ndarray, w: int, h: int) -> np.ndarray:
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    big = np.asarray(Image.fromarray(img).resize((max(w, int(np.ceil(iw * s))), max(h, int(np.ceil(ih * s)))),
                                                 Image.BICUBIC))
    y, x = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return big[y : y + h, x : x + w]


@dataclass
class SeqSpec:
    name: str
    instance: str  # the object
    scene: int  # index into the scenes
    object_px: int  # the object's long side in frame pixels
    seed: int


def paste(frame: np.ndarray, obj: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    h, w = obj.shape[:2]
    region = frame[y : y + h, x : x + w].astype(np.float32)
    a = alpha[..., None]
    frame[y : y + h, x : x + w] = (obj * a + region * (1 - a) + 0.5).astype(np.uint8)


def render_sequence(spec: SeqSpec, scene: np.ndarray, size: tuple[int, int], frames: int,
                    occluder: np.ndarray, visible: tuple[int, int] | None = None
                    ) -> tuple[list[np.ndarray], list[tuple[int, int, int, int] | None]]:
    """Frames of one sequence and the object's full box (x1, y1, x2, y2) in each.

    The scene pans slowly; the object starts off-centre, drifts, breathes ±10 % in size, and in
    every third frame a patch of another texture hides 25-40 % of it from one side (the box
    stays the whole object, as tracking ground truth does). With `visible` (first, end), only
    those frames show it (the box is None in the others): the object comes and goes."""
    w, h = size
    rng = np.random.default_rng(spec.seed)
    obj, alpha = object_image(spec.instance)
    aspect = obj.shape[1] / obj.shape[0]
    margin = 0.12
    wide = np.asarray(Image.fromarray(scene).resize((int(w * (1 + margin)), int(h * (1 + margin))), Image.BICUBIC))
    # start somewhere off-centre, drift up to a fifth of the frame
    start = np.array([rng.uniform(0.05, 0.8) * w, rng.uniform(0.05, 0.8) * h])
    drift = rng.uniform(-0.2, 0.2, size=2) * np.array([w, h])
    pan = rng.uniform(0, 1, size=2)
    out, boxes = [], []
    for i in range(frames):
        u = i / max(1, frames - 1)
        px, py = (pan + u * 0.5) % 1.0
        ox, oy = int(px * (wide.shape[1] - w)), int(py * (wide.shape[0] - h))
        frame = wide[oy : oy + h, ox : ox + w].copy()
        long_side = spec.object_px * (1 + 0.1 * np.sin(2 * np.pi * u))
        ow, oh = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        ow, oh = max(4, int(round(ow))), max(4, int(round(oh)))
        x, y = start + u * drift
        x = int(np.clip(x, 0, w - ow))
        y = int(np.clip(y, 0, h - oh))
        if visible is not None and not visible[0] <= i < visible[1]:
            out.append(frame)
            boxes.append(None)
            continue
        paste(frame, np.asarray(Image.fromarray(obj).resize((ow, oh), Image.BICUBIC)),
              np.asarray(Image.fromarray((alpha * 255).astype(np.uint8)).resize((ow, oh), Image.BILINEAR)) / 255.0,
              x, y)
        if i % 3 == 2:  # partly hidden
            frac = rng.uniform(0.25, 0.4)
            side = rng.integers(4)
            cw, ch = (int(ow * frac), oh) if side < 2 else (ow, int(oh * frac))
            cx = x if side != 1 else x + ow - cw
            cy = y if side != 3 else y + oh - ch
            frame[cy : cy + ch, cx : cx + cw] = _cover(occluder, cw, ch) if cw and ch else frame[cy : cy + ch, cx : cx + cw]
        out.append(frame)
        boxes.append((x, y, x + ow, y + oh))
    return out, boxes


def plan(objects: list[str], sizes: list[int], scenes: int) -> list[SeqSpec]:
    """Each object at each size, each size in another scene (so every object is seen in
    len(sizes) scenes)."""
    specs = []
    for oi, obj in enumerate(objects):
        for si, px in enumerate(sizes):
            scene = (oi * 2 + si) % scenes
            specs.append(SeqSpec(f"{obj}_{px}px_s{scene}", obj, scene, px, seed=1000 * oi + si))
    return specs


def default_scenes(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [collage(list(rng.choice(SCENE_PHOTOS, 4, replace=False)), size, seed=seed + i) for i in range(count)]


def write_set(out: str | Path, size: tuple[int, int] = (1920, 1080), sizes: list[int] | None = None,
              objects: list[str] | None = None, frames: int = 13, scenes: list[np.ndarray] | None = None,
              quality: int = 92, visible: tuple[int, int] | None = None) -> list[SeqSpec]:
    """Write the set under `out/sequences/`; `scenes` default to collages of skimage photos;
    `visible`: the frames (first, end) that show the object (default all)."""
    out = Path(out)
    sizes = sizes or [40, 64, 100, 200, 400]
    objects = objects or list(OBJECTS)
    scenes = scenes if scenes is not None else default_scenes(size, max(len(sizes) + 1, 6))
    occluder = collage(["grass", "brick", "gravel", "coins"], (256, 256), seed=99)
    specs = plan(objects, sizes, len(scenes))
    for spec in specs:
        d = out / "sequences" / spec.name
        (d / "img").mkdir(parents=True, exist_ok=True)
        imgs, boxes = render_sequence(spec, scenes[spec.scene], size, frames, occluder, visible)
        for i, img in enumerate(imgs):
            Image.fromarray(img).save(d / "img" / f"{i + 1:06d}.jpg", quality=quality)
        (d / "groundtruth.txt").write_text("".join("0,0,0,0\n" if b is None else f"{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]}\n"
                                                   for b in boxes))
        (d / "meta.json").write_text(json.dumps({"instance": spec.instance, "scene": spec.scene,
                                                 "object_px": spec.object_px, "frame_size": list(size),
                                                 "visible": list(visible) if visible else None,
                                                 "generated": "vidsearch.testsets"}, indent=1))
    return specs
