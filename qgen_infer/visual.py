"""PNG grids of images, for a person to look at (truth beside reconstruction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TEXT_HEIGHT, TEXT_WIDTH = 12, 6  # a line and a character of PIL's default bitmap font, in pixels


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` in [-1, 1] -> ``[H, W, C]`` uint8."""
    return (np.clip((x + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def save_grid(path: str | Path, columns: list[np.ndarray], *, count: int = 32, scale: int = 2,
              labels: list[str] | None = None, pad: int = 2, title: str | None = None) -> None:
    """Write a PNG whose rows are images and whose columns are ``columns`` (each ``[N, C, H, W]``
    in [-1, 1]): e.g. ``[truth, reconstruction]``. Rows wrap into blocks side by side so the grid
    stays roughly square. ``labels`` go above the first row of each block, ``title`` (e.g. which
    images these are) above everything."""
    n = min(count, min(c.shape[0] for c in columns))
    if n == 0:
        return
    c, h, w = columns[0].shape[1:]
    cell_h, cell_w = h * scale + pad, w * scale + pad
    ncol = len(columns)
    blocks = max(1, int(np.ceil(np.sqrt(n * cell_h / (ncol * cell_w)))))
    rows = int(np.ceil(n / blocks))
    top = TEXT_HEIGHT if title else 0
    head = top + (TEXT_HEIGHT if labels else 0)
    width = blocks * (ncol * cell_w + 2 * pad) + pad
    if title:  # wide enough for the whole title in PIL's default font
        width = max(width, TEXT_WIDTH * len(title) + 2 * pad)
    height = rows * cell_h + pad + head
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 0), title, fill=(0, 0, 0))
    for i in range(n):
        b, r = divmod(i, rows)
        x0 = pad + b * (ncol * cell_w + 2 * pad)
        y0 = head + pad + r * cell_h
        for j, col in enumerate(columns):
            img = Image.fromarray(_to_uint8(col[i]).squeeze(-1) if c == 1 else _to_uint8(col[i]))
            img = img.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(img, (x0 + j * cell_w, y0))
            if labels and r == 0:
                draw.text((x0 + j * cell_w, top), labels[j][: max(1, cell_w // TEXT_WIDTH)],
                          fill=(0, 0, 0))
    canvas.save(path)
