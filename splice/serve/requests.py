"""Request bodies of `splice serve`: their schemas (pydantic, so `/docs` and 422 errors name each field) and the reading
of `/v1/caption`'s two forms, multipart files or JSON with base64 images."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from .images import BadImage, from_base64

MAX_BEAMS = 8
MAX_ITEMS = 16  # images or texts in one request


class Options(BaseModel):
    """Generation settings of a request."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(1, ge=1, le=MAX_BEAMS, description="beam search width (1: greedy)")
    max_new_tokens: int | None = Field(None, ge=1, le=256, description="default: the model's own generation length")


class CaptionOptions(Options):
    heatmap: bool = Field(
        False, description="per-token attention maps (of the best beam), as PNG data URLs, in `heatmaps`"
    )
    return_beams: bool = Field(
        False, description="with num_beams > 1: every beam, best first, with its score, in `beams`"
    )


Items = Annotated[list[str], Field(min_length=1, max_length=MAX_ITEMS)]


class CaptionJSON(CaptionOptions):
    image: str | Items = Field(
        ..., description="a base64-encoded image file (or a list of them); a data: URL prefix is allowed"
    )


class GenerateRequest(Options):
    text: str | Items = Field(..., description=f"a source text (or a list of 1 to {MAX_ITEMS})")


class Beam(BaseModel):
    caption: str
    score: float | None = Field(
        None, description="the beam's length-penalised log-probability (left out for an ONNX export: none given)"
    )


class Caption(BaseModel):
    caption: str
    tokens: list[str] = Field(description="the generated tokens; joined and stripped they are the caption")
    model: str
    heatmaps: list[str] | None = Field(None, description="with heatmap=true: one PNG data URL per token")
    beams: list[Beam] | None = Field(
        None, description="with return_beams=true: the num_beams beams, best first (the first is `caption`)"
    )


class Captions(BaseModel):
    captions: list[Caption]
    model: str


class Generated(BaseModel):
    outputs: list[str]
    model: str


class RequestError(ValueError):
    """A request the server cannot take: `status` (400, 413, 415) and a message naming the field and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _multipart_schema() -> dict[str, Any]:
    options = CaptionOptions.model_json_schema()["properties"]
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": MAX_ITEMS}
    return {"type": "object", "required": ["image"], "properties": {"image": files, **options}}


# `/v1/caption`'s body in the OpenAPI schema: either form (the route reads the request itself).
CAPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _multipart_schema()},
            "application/json": {"schema": CaptionJSON.model_json_schema()},
        },
    }
}


def validation_error(error: ValidationError, where: str = "body") -> RequestValidationError:
    """pydantic's errors as FastAPI's 422, each located under `where`."""
    errors = error.errors(include_url=False)
    return RequestValidationError([{**e, "loc": (where, *e["loc"])} for e in errors])


def _too_many(count: int) -> RequestError:
    return RequestError(413, f"image: {count} images in one request; send at most {MAX_ITEMS} per request")


async def read_caption(request: Request, max_bytes: int) -> tuple[list[bytes], CaptionOptions, bool]:
    r"""
    The image bytes, options and whether a list was sent (the answer is then `{"captions": [...]}`).

    Raises:
        `RequestValidationError` (422): a malformed field; `RequestError`: 400 bad base64, 413 too large or too many,
        415 another content type.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=MAX_ITEMS + 1, max_fields=32)
        values = form.getlist("image")
        if not values:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", "image"), "msg": "Field required: send one or more image files"}]
            )
        if len(values) > MAX_ITEMS:
            raise _too_many(len(values))
        fields = {k: v for k, v in form.multi_items() if k != "image"}
        try:
            options = CaptionOptions.model_validate(fields)
        except ValidationError as error:
            raise validation_error(error) from None
        blobs = []
        for index, value in enumerate(values):
            name = f"image[{index}]" if len(values) > 1 else "image"
            if isinstance(value, UploadFile):
                data = await value.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise RequestError(413, f"{name}: the file is over {max_bytes} bytes; send a smaller image")
                blobs.append(data)
            else:
                blobs.append(from_base64(value, name))
        return blobs, options, len(values) > 1
    if kind == "application/json":
        try:
            payload = json.loads(await request.body())
        except json.JSONDecodeError as error:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body", error.pos), "msg": f"JSON decode error: {error.msg}"}]
            ) from None
        except UnicodeDecodeError as error:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body", error.start), "msg": "JSON decode error: not UTF-8 text"}]
            ) from None
        try:
            body = CaptionJSON.model_validate(payload)
        except ValidationError as error:
            raise validation_error(error) from None
        images = [body.image] if isinstance(body.image, str) else body.image
        names = [f"image[{i}]" if not isinstance(body.image, str) else "image" for i in range(len(images))]
        try:
            blobs = [from_base64(text, name) for text, name in zip(images, names)]
        except BadImage as error:
            raise RequestError(400, str(error)) from None
        options = CaptionOptions.model_validate(body.model_dump(exclude={"image"}))
        return blobs, options, not isinstance(body.image, str)
    raise RequestError(
        415, f"content-type {kind or '(none)'!r}: send multipart/form-data (field 'image') or application/json"
    )
