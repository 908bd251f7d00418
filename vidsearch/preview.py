"""Terminal thumbnails: two pixels per character cell with the upper half block (▀), the
foreground colouring the top pixel and the background the bottom one. Works in any truecolor
terminal; rich downgrades the colours where the terminal has fewer."""

from __future__ import annotations

import numpy as np
from PIL import Image
from rich.style import Style
from rich.text import Text


def half_blocks(image: np.ndarray, width: int = 24) -> Text:
    img = Image.fromarray(image).convert("RGB")
    w, h = img.size
    height = max(2, round(width * h / w / 2) * 2)  # rows of pixels, even
    px = np.asarray(img.resize((width, height), Image.BILINEAR))
    text = Text()
    for y in range(0, height, 2):
        for x in range(width):
            top, bottom = px[y, x], px[y + 1, x]
            text.append("▀", Style(color=f"rgb({top[0]},{top[1]},{top[2]})",
                                   bgcolor=f"rgb({bottom[0]},{bottom[1]},{bottom[2]})"))
        if y + 2 < height:
            text.append("\n")
    return text
