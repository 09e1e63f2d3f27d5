"""The `splice serve` app: FastAPI routes over a backend and the batcher.

`POST /v1/caption` (images), `POST /v1/generate` (texts), `GET /health`, `GET /metrics` (Prometheus), `GET /docs`
(FastAPI's, from the OpenAPI schema at `/openapi.json`) and `GET /` (the page, `static/`).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .._version import __version__
from .backend import Backend, HeatmapUnsupported, Output, Settings
from .batching import Batcher, QueueFull
from .heatmaps import heatmap_urls
from .images import MAX_PIXELS, BadImage, decode_image
from .metrics import CONTENT_TYPE, ServeMetrics
from .requests import CAPTION_BODY, Beam, Caption, Captions, Generated, GenerateRequest, RequestError, read_caption

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
INLINE_DECODE_BYTES = 64 * 1024
ENDPOINTS = ("/v1/caption", "/v1/generate", "/health", "/metrics", "/", "/docs", "/openapi.json")
ERRORS = {
    400: {"description": "an undecodable image, or settings this model cannot serve (the message says which)"},
    413: {"description": "the upload is over the size limit, or holds too many items"},
    415: {"description": "neither multipart/form-data nor application/json"},
    503: {"description": "the queue is full: retry after the `Retry-After` header's seconds"},
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def create_app(
    backend: Backend,
    max_batch_size: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 256,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> FastAPI:
    r"""
    The HTTP app serving `backend` with dynamic batching.

    Args:
        backend: the model (see `splice.serve.backend.Backend`).
        max_batch_size: the most inputs generated together.
        max_wait_ms: how long an input waits for others to join its batch.
        max_queue: the most inputs waiting; past it requests get 503 with `Retry-After`.
        max_upload_bytes: the largest request body (and uploaded file); larger ones get 413.
        max_pixels: the most pixels an image may decode to (decompression bombs get 400).
    """
    batcher = Batcher(backend.run, max_batch_size, max_wait_ms, max_queue)
    metrics = ServeMetrics(batcher.depth)
    batcher.on_batch = metrics.batch_size.observe

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()  # uvicorn has answered every request in flight by now (SIGTERM drains them)

    app = FastAPI(
        title="splice serve",
        version=__version__,
        description=f"Captions and generations from `{backend.name}`, batched. The page is at `/`.",
        lifespan=lifespan,
    )
    app.state.backend, app.state.batcher, app.state.metrics = backend, batcher, metrics

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in ENDPOINTS else "other"
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_upload_bytes:
            response = _error(413, f"the request body is {length} bytes, over the limit of {max_upload_bytes}")
        elif request.method == "POST" and "transfer-encoding" in request.headers and not length:
            # A body of unannounced size would be read whole before its size could be refused.
            response = _error(411, "send the request with a Content-Length header (chunked bodies are not accepted)")
        else:
            response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, error: BadImage) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return _error(503, str(error), {"Retry-After": str(error.retry_after)})

    async def generate(inputs: list[Any], settings: Settings, names: list[str]) -> list[Output]:
        problem = backend.heatmap_problem(settings)
        if problem:
            raise RequestError(400, f"heatmap: {problem}")
        if settings.max_new_tokens is not None and settings.max_new_tokens > backend.max_new_tokens:
            raise RequestValidationError(
                [{"type": "less_than_equal", "loc": ("body", "max_new_tokens"), "input": settings.max_new_tokens,
                  "msg": f"this model generates at most {backend.max_new_tokens} new tokens; ask for fewer"}]
            )  # fmt: skip
        results = await asyncio.gather(*batcher.submit(inputs, settings), return_exceptions=True)
        for name, result in zip(names, results):
            if isinstance(result, HeatmapUnsupported | ValueError):
                raise RequestError(400, f"{name}: {result}")
            if isinstance(result, BaseException):
                raise RequestError(500, f"{name}: generation failed: {type(result).__name__}: {result}")
        return results

    @app.post(
        "/v1/caption",
        response_model=Caption | Captions,
        response_model_exclude_none=True,
        responses=ERRORS,
        openapi_extra=CAPTION_BODY,
        summary="Caption one image (multipart `image` file, or JSON base64) or several (several files, a JSON list)",
    )
    async def caption(request: Request) -> Any:
        if backend.task != "caption":
            raise RequestError(400, f"{backend.name} generates from text: POST {{'text': ...}} to /v1/generate")
        blobs, options, several = await read_caption(request, max_upload_bytes)
        names = [f"image[{i}]" if several else "image" for i in range(len(blobs))]
        decode = lambda: [decode_image(data, name, max_pixels) for data, name in zip(blobs, names)]  # noqa: E731
        # Small uploads decode at once; large ones in a thread, so the event loop keeps serving meanwhile.
        images = decode() if sum(map(len, blobs)) <= INLINE_DECODE_BYTES else await run_in_threadpool(decode)
        if options.return_beams and options.num_beams == 1:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", "return_beams"), "input": True,
                  "msg": "return_beams=true needs num_beams > 1 (got num_beams=1): ask for 2 to 8 beams, or drop it"}]
            )  # fmt: skip
        settings = Settings(options.num_beams, options.max_new_tokens, options.heatmap, options.return_beams)
        outputs = await generate(images, settings, names)
        results = []
        for image, output in zip(images, outputs):
            maps = await run_in_threadpool(heatmap_urls, image, output.attention) if settings.heatmap else None
            beams = [Beam(caption=text, score=score) for text, score in output.beams] if output.beams else None
            results.append(
                Caption(caption=output.text, tokens=output.tokens, model=backend.name, heatmaps=maps, beams=beams)
            )
        return Captions(captions=results, model=backend.name) if several else results[0]

    @app.post("/v1/generate", response_model=Generated, responses=ERRORS, summary="Generate from source texts")
    async def generate_text(body: GenerateRequest) -> Generated:
        if backend.task != "generate":
            raise RequestError(400, f"{backend.name} captions images: POST them to /v1/caption")
        texts = [body.text] if isinstance(body.text, str) else body.text
        names = [f"text[{i}]" if not isinstance(body.text, str) else "text" for i in range(len(texts))]
        outputs = await generate(texts, Settings(body.num_beams, body.max_new_tokens), names)
        return Generated(outputs=[o.text for o in outputs], model=backend.name)

    @app.get("/health", summary="The model, its device and the queue depth")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": backend.name,
            "device": backend.device,
            "task": backend.task,
            "heatmaps": backend.heatmap_problem(Settings(heatmap=True)) is None,
            "queue_depth": batcher.depth(),
            "max_batch_size": batcher.max_batch_size,
        }

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
