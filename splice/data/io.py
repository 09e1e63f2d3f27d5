"""Opening images: every path, bytes or PIL image becomes an RGB PIL image, and unreadable files are skipped, counted.

Depends on nothing else in splice, so every layer (inference, data, retrieval, the command line) may use it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What Pillow raises for missing, truncated or non-image files.
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def open_image(image: Any) -> Image.Image:
    """An RGB PIL image from a path, bytes, a `{"bytes"|"path"}` dict (datasets' Image feature) or a PIL image."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, Path)):
        image = Image.open(image)
    image.load()
    return image.convert("RGB")  # grey, palette and RGBA images all become 3-channel


def _readable(image: Any) -> bool:
    try:
        open_image(image)
    except UNREADABLE_IMAGE_ERRORS:
        return False
    return True


def keep_readable(records: list[dict], source: str = "data") -> list[dict]:
    """Drop records whose image cannot be read, and report how many (a corrupt file never stops a run)."""
    kept = [r for r in records if "image" not in r or _readable(r["image"])]
    skipped = len(records) - len(kept)
    if skipped:
        logger.warning(f"{source}: skipped {skipped} of {len(records)} records with unreadable or corrupt images.")
    return kept
