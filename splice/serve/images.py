"""Uploaded images: bytes (a multipart file or base64 in JSON) into RGB PIL images, or a `BadImage` naming the
problem (not base64, not an image, truncated, too many pixels) and the fix."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from ..data_io import to_rgb

# The most pixels an upload may decode to (a small PNG can hold gigapixels: a decompression bomb).
MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """An upload that is not a usable image; the message names the field, the problem and the fix."""


def from_base64(text: str, field: str = "image") -> bytes:
    """The bytes of a base64 string (a `data:image/...;base64,` prefix is allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage(
            f"{field}: not valid base64 ({len(text)} characters); send the image file's bytes base64-encoded"
        ) from None


def decode_image(data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB image from encoded bytes (PNG, JPEG, ...), fully decoded; `BadImage` when that fails."""
    if not data:
        raise BadImage(f"{field}: the upload is empty; send an image file (PNG, JPEG, ...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"{field}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels} (a "
                    "decompression bomb?); send a smaller image"
                )
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"{field}: too many pixels ({error}); send a smaller image") from None
    except Image.UnidentifiedImageError:
        raise BadImage(
            f"{field}: not an image file ({len(data)} bytes, starting {data[:8]!r}); send PNG, JPEG, WebP, GIF or BMP"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise BadImage(f"{field}: the image could not be decoded ({error}); send the complete, valid file") from None
    try:
        return to_rgb(image)
    except Exception as error:  # an exotic mode PIL cannot convert
        raise BadImage(f"{field}: the image could not be converted to RGB ({error})") from None
