"""Synthetic videos with a known answer: a real object photo pasted, moving and changing size,
into a known time range of a video made of other real photos (all from skimage.data).

Used by `vidsearch demo` and by the end-to-end tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

# (skimage.data name, crop y1, y2, x1, x2): the object is the cup and saucer of `coffee`.
OBJECTS = {
    "coffee": ("coffee", 10, 395, 70, 485),
    "rocket": ("rocket", 0, 427, 200, 420),
    "astronaut-face": ("astronaut", 20, 220, 150, 330),
}
BACKGROUNDS = ("hubble_deep_field", "immunohistochemistry", "chelsea", "retina", "colorwheel", "astronaut")


def skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def object_crop(name: str = "coffee") -> np.ndarray:
    src, y1, y2, x1, x2 = OBJECTS[name]
    return skimage_photo(src)[y1:y2, x1:x2].copy()


@dataclass
class SampleTruth:
    """Where the object is: per frame number, a box x1, y1, x2, y2 (None when absent)."""

    fps: Fraction
    frames: int
    boxes: dict[int, tuple[int, int, int, int]]
    start: float  # seconds, first frame showing the object
    end: float  # seconds, after the last frame showing it

    def box_at(self, frame: int) -> tuple[int, int, int, int] | None:
        return self.boxes.get(frame)


def _background(name: str, size: tuple[int, int], t: float) -> np.ndarray:
    """A slowly panning view of a real photo, at (w, h)."""
    w, h = size
    img = skimage_photo(name)
    ih, iw = img.shape[:2]
    scale = max(w / iw, h / ih) * 1.25
    big = np.asarray(Image.fromarray(img).resize((int(iw * scale) + 1, int(ih * scale) + 1), Image.BILINEAR))
    max_x, max_y = big.shape[1] - w, big.shape[0] - h
    x = int(max_x * (0.5 + 0.5 * np.sin(t * 0.7)))
    y = int(max_y * (0.5 + 0.5 * np.cos(t * 0.5)))
    return big[y : y + h, x : x + w]


def render_frames(size=(640, 360), fps: Fraction = Fraction(24), seconds: float = 10.0,
                  appear: tuple[float, float] = (3.0, 7.0), obj: str = "coffee",
                  backgrounds: tuple[str, ...] = BACKGROUNDS, shot_seconds: float = 2.5):
    """Yield (frame number, RGB frame) and fill a SampleTruth; shots cut between backgrounds."""
    w, h = size
    crop = object_crop(obj)
    n = int(round(seconds * fps))
    truth = SampleTruth(fps, n, {}, appear[0], appear[1])
    cache: dict[str, np.ndarray] = {}
    frames = []
    for i in range(n):
        t = i / float(fps)
        shot = backgrounds[int(t // shot_seconds) % len(backgrounds)]
        frame = _background(shot, size, t).copy()
        if appear[0] <= t < appear[1]:
            u = (t - appear[0]) / (appear[1] - appear[0])
            oh = int(h * (0.45 + 0.25 * np.sin(np.pi * u)))  # grows then shrinks
            ow = int(oh * crop.shape[1] / crop.shape[0])
            key = f"{ow}x{oh}"
            if key not in cache:
                cache[key] = np.asarray(Image.fromarray(crop).resize((ow, oh), Image.BILINEAR))
            x = int((w - ow) * (0.1 + 0.8 * u))
            y = int((h - oh) * (0.5 + 0.4 * np.sin(2 * np.pi * u)))
            frame[y : y + oh, x : x + ow] = cache[key]
            truth.boxes[i] = (x, y, x + ow, y + oh)
        frames.append(frame)
    return frames, truth


def write_video(path: str | Path, frames: list[np.ndarray], fps: Fraction = Fraction(24),
                codec: str = "libx264", pts: list[int] | None = None, time_base: Fraction | None = None,
                rotation: int = 0, timecode: str | None = None) -> Path:
    """Encode RGB frames with PyAV. `pts`/`time_base` give variable frame rate; `rotation` sets
    a display matrix; `timecode` a start timecode in the container's metadata."""
    import av

    path = Path(path)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        if timecode:
            out.metadata["timecode"] = timecode
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "g": "24"}
        if timecode:
            stream.metadata["timecode"] = timecode
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if rotation:
        _set_rotation(path, rotation)
    return path


def _set_rotation(path: Path, degrees: int) -> None:
    """Remux with a display matrix (as phones write it)."""
    import av

    tmp = path.with_name(path.stem + ".rot" + path.suffix)
    with av.open(str(path)) as src, av.open(str(tmp), "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        s_out.set_display_rotation(degrees)
        for packet in src.demux(s_in):
            if packet.dts is None:
                continue
            packet.stream = s_out
            dst.mux(packet)
    tmp.replace(path)


def make_sample(path: str | Path, seconds: float = 10.0, appear: tuple[float, float] = (3.0, 7.0),
                obj: str = "coffee", size=(640, 360), fps: Fraction = Fraction(24)) -> SampleTruth:
    frames, truth = render_frames(size, fps, seconds, appear, obj)
    write_video(path, frames, fps)
    return truth
