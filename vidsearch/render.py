"""Pictures of results: one overlay per segment (best frame, box, label) and a contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BOX_COLOUR = (255, 200, 0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_box(image: np.ndarray, box, label: str) -> Image.Image:
    """The frame with the box drawn (3 px, scaled to the frame) and a label above it."""
    img = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 400))
    x1, y1, x2, y2 = [float(v) for v in box]
    draw.rectangle([x1, y1, x2, y2], outline=BOX_COLOUR, width=width)
    font = _font(max(12, round(img.size[1] / 30)))
    tb = draw.textbbox((0, 0), label, font=font)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else min(y2 + width, img.size[1] - th - 2 * width)
    tx = min(max(0, x1), max(0, img.size[0] - tw - 2 * width))
    draw.rectangle([tx, ty, tx + tw + 2 * width, ty + th + 2 * width], fill=(0, 0, 0))
    draw.text((tx + width - tb[0], ty + width - tb[1]), label, fill=BOX_COLOUR, font=font)
    return img


def draw_thumbnail(image: np.ndarray, box, width: int) -> Image.Image:
    """The frame scaled to `width` pixels wide (never enlarged), the box drawn on it after
    scaling so that it stays visible in a small picture."""
    img = Image.fromarray(image).convert("RGB")
    s = min(1.0, width / img.size[0])
    if s < 1.0:
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.BILINEAR)
    x1, y1, x2, y2 = [round(float(v) * s) for v in box]
    line = max(3, round(img.size[0] / 250))
    # whole pixels, so the line's middle lies on the box's edge (Pillow truncates a fraction)
    h = line // 2
    ImageDraw.Draw(img).rectangle([x1 - h, y1 - h, x2 + h, y2 + h], outline=BOX_COLOUR, width=line)
    return img


def crop_box(image: np.ndarray, box, pad: float = 0.1) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = [float(v) for v in box]
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    x1, y1 = int(max(0, x1 - px)), int(max(0, y1 - py))
    x2, y2 = int(min(w, x2 + px)), int(min(h, y2 + py))
    if x2 <= x1 or y2 <= y1:
        return image
    return image[y1:y2, x1:x2]


def contact_sheet(tiles: list[tuple[np.ndarray, str]], columns: int = 4, tile: int = 240) -> Image.Image:
    """Crops with captions in a grid (no wider than the number of crops)."""
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, (len(tiles) + columns - 1) // columns)
    caption = 28
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for i, (img, text) in enumerate(tiles):
        im = Image.fromarray(img).convert("RGB")
        im.thumbnail((tile - 8, tile - 8))
        r, c = divmod(i, columns)
        x0, y0 = c * tile, r * (tile + caption)
        sheet.paste(im, (x0 + (tile - im.size[0]) // 2, y0 + (tile - im.size[1]) // 2))
        draw.text((x0 + 6, y0 + tile + 4), text, fill=(230, 230, 230), font=font)
    return sheet


def save_png(img: Image.Image, path: Path) -> Path:
    from .library import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
