"""`splice serve` under overload and bad input, with a stand-in backend (no model): 503 + Retry-After when the queue is
full, 413, 400 for undecodable / truncated / oversized images, 422 naming the field, a failing input failing alone."""

import asyncio
import base64
import threading

import pytest
from serve_tiny import image, png
from test_serve import form, serve

from splice.serve import Output, create_app


class StandIn:
    """A backend that captions an image with its size; a 13x13 image makes it raise; `gate` holds the worker."""

    name, device, task, max_new_tokens = "stand-in", "cpu", "caption", 32

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    def heatmap_problem(self, settings):
        return None

    def run(self, inputs, settings):
        assert self.gate.wait(30)
        self.batches.append(len(inputs))
        if any(picture.size == (13, 13) for picture in inputs):
            raise RuntimeError("poisoned input")
        return [Output(f"{p.width}x{p.height}", [f"{p.width}x{p.height}"]) for p in inputs]


def test_a_failing_input_fails_alone_not_its_batch():
    backend = StandIn()
    sizes = [(20, 10), (13, 13), (30, 40), (50, 5)]

    async def exchange(client):
        return await asyncio.gather(*(client.post("/v1/caption", **form(image(0, size))) for size in sizes))

    responses = serve(create_app(backend, max_wait_ms=300), exchange)
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert [r.json()["caption"] for r in responses if r.status_code == 200] == ["10x20", "40x30", "5x50"]
    assert "image: generation failed: RuntimeError: poisoned input" in responses[1].json()["detail"]
    assert backend.batches[0] == 4 and sorted(backend.batches[1:]) == [1, 1, 1, 1]  # the batch, then one by one


def test_full_queue_answers_503_with_retry_after_and_recovers():
    backend = StandIn()
    backend.gate.clear()

    async def exchange(client):
        first = asyncio.ensure_future(client.post("/v1/caption", **form(image(1))))
        await asyncio.sleep(0.3)  # the first is in the worker, held by the gate
        second = asyncio.ensure_future(client.post("/v1/caption", **form(image(2))))
        await asyncio.sleep(0.1)
        refused = await client.post("/v1/caption", **form(image(3)))
        health = await client.get("/health")
        backend.gate.set()
        return refused, health, await first, await second

    refused, health, first, second = serve(create_app(backend, max_batch_size=1, max_wait_ms=0, max_queue=2), exchange)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["detail"] and health.json()["queue_depth"] == 2
    assert first.status_code == second.status_code == 200


def bomb() -> bytes:
    """A PNG that is a few hundred bytes and 6000x6000 pixels."""
    from PIL import Image

    return png(Image.new("1", (6000, 6000)))


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"content": b"x" * 2000, "headers": {"content-type": "application/json"}}, 413, "over the limit of 1000"),
        ({"files": [("image", ("a.png", b"not an image", "image/png"))]}, 400, "image: not an image file"),
        ({"files": [("image", ("a.png", png(image(0))[:60], "image/png"))]}, 400, "could not be decoded"),
        ({"files": [("image", ("a.png", b"", "image/png"))]}, 400, "the upload is empty"),
        ({"json": {"image": "not base64!"}}, 400, "image: not valid base64"),
        ({"json": {"image": ["aGk=", "x"]}}, 400, "image[1]: not valid base64"),
        ({"json": {"image": []}}, 422, "at least 1 item"),
        ({"json": {"image": ["aGk="] * 17}}, 422, "at most 16 items"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 422, "JSON decode error"),
        ({"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 422, "not UTF-8"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        ({"json": {"image": "aGk=", "num_beams": 0}}, 422, "num_beams"),
        ({"json": {"image": "aGk=", "max_new_tokens": "many"}}, 422, "max_new_tokens"),
        ({"json": {"image": "aGk=", "colour": "red"}}, 422, "colour"),
        ({"json": {"num_beams": 2}}, 422, "image"),
        ({"data": {"num_beams": "two"}, "files": [("image", ("a.png", b"x", "image/png"))]}, 422, "num_beams"),
        ({"data": {"heatmap": "maybe"}, "files": [("image", ("a.png", b"x", "image/png"))]}, 422, "heatmap"),
        ({"data": {"num_beams": "2"}, "files": [("picture", ("a.png", b"x", "image/png"))]}, 422, "image"),
    ],
)
def test_bad_requests_get_their_status_and_name_the_problem(body, status, words):
    response = serve(create_app(StandIn(), max_upload_bytes=1000), lambda client: client.post("/v1/caption", **body))
    assert response.status_code == status, response.text
    assert words in response.text


def test_decompression_bomb_and_a_too_large_file_part():
    async def exchange(client):
        encoded = base64.b64encode(bomb()).decode()
        return (
            await client.post("/v1/caption", json={"image": encoded}),
            await client.post("/v1/caption", **form(image(0, (300, 300)))),
        )

    app = create_app(StandIn(), max_pixels=10_000_000, max_upload_bytes=200_000)
    bombed, large = serve(app, exchange)
    assert bombed.status_code == 400 and "36000000 pixels, over the limit of 10000000" in bombed.json()["detail"]
    assert large.status_code == 413


def test_a_chunked_body_of_unannounced_size_is_refused():
    async def chunks():
        yield b'{"image": "'
        yield b"aGk=" * 10
        yield b'"}'

    response = serve(
        create_app(StandIn()),
        lambda client: client.post("/v1/caption", content=chunks(), headers={"content-type": "application/json"}),
    )
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_generate_refuses_a_caption_model_and_checks_its_fields():
    async def exchange(client):
        return (
            await client.post("/v1/generate", json={"text": "hello"}),
            await client.post("/v1/generate", json={"text": []}),
            await client.post("/v1/generate", json={"txt": "hello"}),
        )

    wrong_model, empty, misspelt = serve(create_app(StandIn()), exchange)
    assert wrong_model.status_code == 400 and "/v1/caption" in wrong_model.json()["detail"]
    assert empty.status_code == 422 and '"text"' in empty.text and "at least 1 item" in empty.text
    assert misspelt.status_code == 422 and "txt" in misspelt.text


def test_max_new_tokens_over_the_models_limit_is_a_422():
    backend = StandIn()
    backend.max_new_tokens = 4
    response = serve(create_app(backend), lambda client: client.post("/v1/caption", **form(image(0), max_new_tokens=5)))
    assert response.status_code == 422 and "at most 4 new tokens" in response.text


def test_the_cli_builds_the_app_flags(tmp_path):
    from splice.cli import main
    from splice.training.config import ConfigError

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    with pytest.raises(ConfigError, match="config.json"):
        main(["serve", str(tmp_path)])
