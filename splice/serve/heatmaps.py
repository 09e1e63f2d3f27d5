"""Cross-attention heatmaps: a per-token attention grid, upsampled onto its image and blended over it, as a PNG data
URL (what `/v1/caption` returns with `heatmap=true` and the page shows on hover)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# Overlays are drawn on a copy of the image at most this many pixels on its longer side (keeps responses small).
MAX_SIDE = 320


def _fitted(image: Image.Image, max_side: int) -> Image.Image:
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def overlay(image: Image.Image, grid: Sequence[Sequence[float]], max_side: int = MAX_SIDE) -> Image.Image:
    """`image` (scaled to `max_side`) with `grid` (values in [0, 1], any `[rows, cols]`) upsampled over it in red."""
    base = _fitted(image, max_side)
    weights = np.clip(np.asarray(grid, dtype=np.float32), 0.0, 1.0)
    mask = Image.fromarray(np.uint8(np.rint(weights * 255)), "L").resize(base.size, Image.Resampling.BILINEAR)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0 * 0.7  # [H, W, 1]
    red = np.array([255.0, 40.0, 40.0], dtype=np.float32)
    pixels = np.asarray(base, dtype=np.float32) * (1 - alpha) + red * alpha
    return Image.fromarray(np.uint8(np.clip(np.rint(pixels), 0, 255)), "RGB")


def data_url(image: Image.Image) -> str:
    """A PNG data URL of `image`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_urls(image: Image.Image, grids: Sequence[Sequence[Sequence[float]]]) -> list[str]:
    """One PNG data URL per token's grid, overlaid on `image`."""
    return [data_url(overlay(image, grid)) for grid in grids]


def write_token_heatmaps(
    folder: Path, image: Image.Image, tokens: Sequence[str], grids: Sequence[Sequence[Sequence[float]]]
) -> list[Path]:
    """One overlay PNG per token, `folder/<NN>-<token>.png` (`splice caption --heatmaps`); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (token, grid) in enumerate(zip(tokens, grids)):
        name = re.sub(r"[^\w-]+", "_", token.strip()) or "_"
        path = folder / f"{index:02d}-{name}.png"
        overlay(image, grid).save(path)
        paths.append(path)
    return paths
