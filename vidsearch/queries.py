"""A query: the image (a crop, or a frame and a box) the user searches with, read and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .video import probe, read_frame_at


def load_image(path: str | Path) -> np.ndarray:
    """Any image Pillow reads (grayscale, RGBA, 16-bit, CMYK, ...) -> RGB uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"query image {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.stack([arr] * 3, axis=-1))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read: give a PNG, JPEG, TIFF or WebP") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path} is a damaged image ({exc}): export the crop again") from None


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'X,Y,W,H' in pixels -> (x, y, w, h)."""
    parts = text.replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(f"--box {text!r} is not X,Y,W,H in pixels (e.g. --box 120,40,200,150)")
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise InputError(f"--box {text!r} has zero or negative width/height: W and H must be > 0")
    return x, y, w, h


def box_in_image(box: tuple[float, float, float, float], shape: tuple[int, ...], what: str) -> tuple[float, float, float, float]:
    """(x, y, w, h) -> (x1, y1, x2, y2) clipped to the image; outside or empty is an error."""
    h_img, w_img = shape[:2]
    x, y, w, h = box
    x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w_img), x + w), min(float(h_img), y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise InputError(f"--box {x:g},{y:g},{w:g},{h:g} lies outside {what} ({w_img}x{h_img} pixels)")
    return x1, y1, x2, y2


def box_cut_warning(box: tuple[float, float, float, float], shape: tuple[int, ...], what: str) -> str | None:
    """A warning where (x, y, w, h) reaches past the image and was cut (None where it fits).
    Where the numbers read as corners x1,y1,x2,y2 would lie inside, it says so: passing corners
    is the usual way to get here, and the box then silently covers the wrong place."""
    h_img, w_img = shape[:2]
    x, y, w, h = box
    if x >= -0.5 and y >= -0.5 and x + w <= w_img + 0.5 and y + h <= h_img + 0.5:
        return None
    text = f"--box {x:g},{y:g},{w:g},{h:g} reaches past {what} ({w_img}x{h_img} pixels) and was cut to fit"
    if 0 <= x < w <= w_img and 0 <= y < h <= h_img:
        text += (f"; --box takes X,Y,W,H (a width and height, not corners): if you meant corners, "
                 f"give --box {x:g},{y:g},{w - x:g},{h - y:g}")
    return text


@dataclass
class Query:
    source: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image
    image: np.ndarray
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "box": [round(v, 1) for v in self.box],
                "size": [int(self.image.shape[1]), int(self.image.shape[0])]}


# A query box whose pixels vary by less than this (standard deviation, 0-255, its most varied
# channel) is plain. Measured: a crop of clear sky 3.0; the objects of the eight instance-dev
# sequences 18.6 (a dark-clad walker) to 72.7, the generated set's objects 30-78.
PLAIN_QUERY = 8.0


def _query_box(text: str | None, shape: tuple[int, ...], what: str) -> tuple[tuple[float, float, float, float], list[str]]:
    """--box text (None: the whole image) -> the box as x1, y1, x2, y2 in the image, and warnings."""
    if not text:
        return (0.0, 0.0, float(shape[1]), float(shape[0])), []
    raw = parse_box(text)
    return box_in_image(raw, shape, what), [m for m in [box_cut_warning(raw, shape, what)] if m]


def make_queries(images: list[str], boxes: list[str], query_video: str | None = None,
                 at: str | None = None) -> list[Query]:
    """--query IMG (and --box per image, or one box for all) and/or --query-video V --at T --box B."""
    if not images and not query_video:
        raise InputError("give a query: --query IMAGE (a crop, or a frame with --box X,Y,W,H) or --query-video VIDEO --at TIME --box X,Y,W,H")
    if boxes and images and len(boxes) not in (1, len(images)) and not query_video:
        raise InputError(f"{len(boxes)} --box values for {len(images)} --query images: give one box, or one per image")
    from .render import crop_box

    queries: list[Query] = []
    for i, path in enumerate(images):
        img = load_image(path)
        box_text = boxes[i] if len(boxes) == len(images) else (boxes[0] if boxes and not query_video else None)
        box, warnings = _query_box(box_text, img.shape, Path(path).name)
        queries.append(Query(str(Path(path).resolve()), box, img, warnings))
    if query_video:
        if at is None:
            raise InputError("--query-video needs --at TIME (seconds or HH:MM:SS:FF)")
        from .timecode import parse_time

        info = probe(query_video)
        seconds = parse_time(at, info.fps)
        frame = read_frame_at(query_video, seconds)
        box, warnings = _query_box(boxes[-1] if boxes else None, frame.image.shape, Path(query_video).name)
        queries.append(Query(f"{Path(query_video).resolve()}@{frame.time:.3f}s", box, frame.image, warnings))
    for q in queries:
        w, h = q.box[2] - q.box[0], q.box[3] - q.box[1]
        if min(w, h) < 32:
            q.warnings.append(f"the query box in {Path(q.source).name} is only {w:.0f}x{h:.0f} pixels: "
                              "recall will be poor; a larger crop works better")
        step = max(1, int(np.sqrt(w * h / 250_000)))  # a quarter-million pixels are plenty for a spread
        spread = float(crop_box(q.image, q.box, pad=0.0)[::step, ::step].reshape(-1, 3).std(0).max())
        if spread < PLAIN_QUERY:
            q.warnings.append(f"the query box in {Path(q.source).name} is nearly plain (its pixels vary by "
                              f"{spread:.1f} of 255): sky or a wall matches anywhere, so hits and boxes will be "
                              "vague; give a crop or box around the object itself")
    return queries
