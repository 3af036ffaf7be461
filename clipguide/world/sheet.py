"""Contact sheets: a grid of images with their captions, for looking at the data."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _to_pil(img: torch.Tensor | np.ndarray) -> Image.Image:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(a)


def contact_sheet(images: Sequence[torch.Tensor | np.ndarray], captions: Sequence[str],
                  path: str | Path | None = None, cols: int = 8, zoom: int = 2,
                  text_lines: int = 3) -> Image.Image:
    """Grid of images (each scaled up `zoom` times without smoothing) with wrapped captions
    underneath; saved to `path` when given."""
    tiles = [_to_pil(im) for im in images]
    if not tiles:
        raise ValueError("no images")
    w, h = tiles[0].width * zoom, tiles[0].height * zoom
    font = ImageFont.load_default()
    chars = max(8, w // 6)
    line_h = 11
    cell_h = h + text_lines * line_h + 6
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 6) + 6, rows * cell_h + 6), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (tile, text) in enumerate(zip(tiles, captions)):
        x = 6 + (k % cols) * (w + 6)
        y = 6 + (k // cols) * cell_h
        sheet.paste(tile.resize((w, h), Image.NEAREST), (x, y))
        for j, line in enumerate(textwrap.wrap(text, chars)[:text_lines]):
            draw.text((x, y + h + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    if path is not None:
        sheet.save(path)
    return sheet
