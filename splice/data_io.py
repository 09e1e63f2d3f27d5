"""Opening images and text files: every path, bytes or PIL image becomes an RGB PIL image, unreadable images are
skipped, counted and named, and bad data raises one error type, `DataError`, naming the file, line, field and fix.

Depends on nothing else in splice, so every layer (inference, data, retrieval, the command line) may use it.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What Pillow raises for missing, truncated or non-image files (and `DataError`, a `ValueError`: `open_image` raises it,
# naming the file, for every image it cannot read, so these still catch every unreadable image).
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)
# How many skipped records a warning names (the count is always complete).
NAMED_IN_WARNINGS = 5
_SHOWN_CHARS = 80


def shorten(value: Any, limit: int = _SHOWN_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters (with `...`) so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataError(ValueError):
    r"""
    Bad input data: the message names the file, the line (or row / JSON path), the field, the bad value and the fix.

    Args:
        problem: what is wrong, e.g. `"is missing"`.
        file (*optional*): the file (or a source name such as `"dataset"`).
        line (*optional*): 1-based line number, or a location such as `"row 3"` or `"images[4]"`.
        field (*optional*): the field or column.
        value (*optional*): the bad value (shown truncated).
        fix (*optional*): what to do about it.

    The parts are kept as attributes (`file`, `line`, `field`, `value`, `fix`) for programs that handle the error.
    """

    _NO_VALUE = object()

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | str | None = None,
        field: str | None = None,
        value: Any = _NO_VALUE,
        fix: str | None = None,
    ):
        self.problem, self.file, self.line, self.field, self.fix = problem, file, line, field, fix
        self.value = None if value is DataError._NO_VALUE else value
        # "file:6: field 'text' is missing", "file, images[3]: field 'id' ...": the compiler style editors jump to.
        where = "" if file is None else str(file)
        if line is not None:
            where += f":{line}" if isinstance(line, int) and where else f", {line}" if where else str(line)
        subject = f"field {field!r} " if field is not None else ""
        message = (f"{where}: " if where else "") + subject + problem
        if value is not DataError._NO_VALUE:
            message += f" (got {shorten(value)})"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


def read_text(path: str | Path) -> str:
    """A text file decoded as UTF-8 (a leading BOM is dropped); a `DataError` names the byte offset and line if not."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 at byte offset {error.start} ({error.reason})",
            file=path,
            line=line,
            value=data[error.start : error.start + 8],
            fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def parse_json(text: str, file: str | Path, line: int | None = None) -> Any:
    """`json.loads`, with a `DataError` at the right line: `line` is where `text` starts in the file (JSONL)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        at = error.lineno if line is None else line + error.lineno - 1
        raise DataError(
            f"not valid JSON: {error.msg} at column {error.colno}",
            file=file,
            line=at,
            value=error.doc.split("\n")[error.lineno - 1],  # JSON counts "\n" only (not U+2028 or "\x0b")
            fix="correct the JSON syntax on that line (JSONL: one complete object per line)",
        ) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to parse", file=file, line=line, fix="flatten the JSON") from None


def _name(image: Any) -> str:
    if isinstance(image, dict):
        return str(image.get("path") or "<image bytes>")
    if isinstance(image, (str, Path)):
        return str(image)
    if isinstance(image, (bytes, bytearray)):
        return "<image bytes>"
    return str(getattr(image, "filename", "") or f"<{type(image).__name__}>")


def _scaled_to_8_bit(image: Image.Image) -> Image.Image:
    """High-bit-depth grey ("I;16*", "I", "F") as 8-bit "L" by its real range, never clipped to white.

    16-bit modes are divided by 257 (65535 -> 255). "I" and "F" hold values of any range: values within 0-255 are kept,
    within 0-65535 divided by 257 (a 16-bit file opened as "I"), floats within 0-1 multiplied by 255, anything else
    stretched from its minimum to its maximum.
    """
    pixels = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scaled = pixels / 257.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = pixels * 255.0
    elif low >= 0 and high <= 255:
        scaled = pixels
    elif low >= 0 and high <= 65535 and image.mode == "I":
        scaled = pixels / 257.0
    else:
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of any PIL image: 16-bit and float grey scaled by range, transparency composited onto white."""
    if image.mode.startswith("I") or image.mode == "F":
        return _scaled_to_8_bit(image).convert("RGB")
    if image.mode == "La":  # premultiplied alpha: Pillow converts it to "LA" only
        image = image.convert("LA")
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in image.info:
        with warnings.catch_warnings():  # "Palette images with Transparency expressed in bytes should be converted"
            warnings.simplefilter("ignore", UserWarning)
            rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "LAB":
        try:  # a colour-managed conversion; without littleCMS, Pillow's plain one below
            from PIL import ImageCms

            transform = ImageCms.buildTransform(
                ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
            )
            return ImageCms.applyTransform(image, transform)
        except Exception:  # noqa: BLE001
            pass
    return image.convert("RGB")  # palette, CMYK, YCbCr, HSV, L and 1 all become 3-channel


def open_image(image: Any) -> Image.Image:
    r"""
    An RGB PIL image from a path, bytes, a `{"bytes"|"path"}` dict (datasets' Image feature) or a PIL image.

    Grey, palette, CMYK and 1-bit images are converted to RGB; 16-bit grey ("I;16", "I;16B", "I") is scaled to 8 bits
    by its range (x / 257), not clipped; transparent images (RGBA, LA, palette with transparency) are composited onto
    white. An image that cannot be read raises `DataError` (a `ValueError`, so within `UNREADABLE_IMAGE_ERRORS`)
    naming the file.
    """
    name = _name(image)
    try:
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(image)))
        elif isinstance(image, (str, Path)):
            image = Image.open(image)
        elif not isinstance(image, Image.Image):
            raise DataError(
                "not an image",
                file=name,
                value=image,
                fix="give a file path, image bytes, a {'bytes'|'path'} dict or a PIL image",
            )
        image.load()
        return to_rgb(image)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("image file not found", file=name, fix="check the file name and the image folder") from None
    except MemoryError:
        raise
    except Exception as error:  # untrusted bytes make Pillow raise almost anything (EOFError, struct.error, ...)
        raise DataError(
            f"cannot read the image ({type(error).__name__}: {error})",
            file=name,
            fix="replace or remove the corrupt file",
        ) from error


def _readable(image: Any) -> bool:
    try:
        open_image(image)
    except UNREADABLE_IMAGE_ERRORS:
        return False
    return True


def keep_readable(records: list[dict], source: str = "data") -> list[dict]:
    """Drop records whose image cannot be read, and report how many and which (a corrupt file never stops a run)."""
    kept, skipped = [], []
    for record in records:
        if "image" not in record or _readable(record["image"]):
            kept.append(record)
        else:
            skipped.append(_name(record["image"]))
    if skipped:
        named = ", ".join(skipped[:NAMED_IN_WARNINGS]) + (", ..." if len(skipped) > NAMED_IN_WARNINGS else "")
        logger.warning(
            f"{source}: skipped {len(skipped)} of {len(records)} records with unreadable or corrupt images: {named}."
        )
    return kept
