"""`splice serve` over real tiny models, in process (httpx's ASGI transport): the API, dynamic batching that gives
each request exactly its single-request output (mixed image sizes, settings, prompt lengths), heatmaps, SmallCap."""

import asyncio
import base64
import io
import json

import httpx
import pytest
import torch
from PIL import Image
from serve_tiny import image, png, save_captioner, save_smallcap, save_text_model

import splice
from splice.precision import is_quantized
from splice.serve import Settings, create_app, load_backend
from splice.training.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return load_backend(save_captioner(tmp_path_factory.mktemp("captioner")))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return load_backend(save_text_model(tmp_path_factory.mktemp("text")))


@pytest.fixture(scope="module")
def smallcap(tmp_path_factory):
    return load_backend(save_smallcap(tmp_path_factory.mktemp("smallcap")))


def serve(app, exchange):
    """Run `exchange(client)` against `app` (its lifespan started, so the batcher runs) and return its result."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
                return await exchange(client)

    return asyncio.run(main())


def form(*images, **fields):
    files = [("image", (f"{i}.png", png(picture), "image/png")) for i, picture in enumerate(images)]
    return {"files": files, "data": {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}}


def expected(backend, picture, settings):
    """What the backend gives this image alone."""
    return backend.run([picture], settings)[0]


def batch_sizes(metrics_text: str) -> tuple[float, float]:
    values = dict(line.rsplit(" ", 1) for line in metrics_text.splitlines() if line.startswith("splice_batch_size_"))
    return float(values["splice_batch_size_count"]), float(values["splice_batch_size_sum"])


def test_caption_multipart_json_and_several_images_match_the_model(captioner):
    pictures = [image(1), image(2, (70, 20)), image(3, (15, 60))]
    settings = Settings(max_new_tokens=8)

    async def exchange(client):
        one = await client.post("/v1/caption", **form(pictures[0], max_new_tokens=8))
        encoded = base64.b64encode(png(pictures[0])).decode()
        as_json = await client.post(
            "/v1/caption", json={"image": "data:image/png;base64," + encoded, "max_new_tokens": 8}
        )
        several = await client.post("/v1/caption", **form(*pictures, max_new_tokens=8))
        listed = await client.post("/v1/caption", json={"image": [encoded], "max_new_tokens": 8})
        return one, as_json, several, listed

    one, as_json, several, listed = serve(create_app(captioner), exchange)
    alone = expected(captioner, pictures[0], settings)
    assert one.status_code == 200 and one.json() == {
        "caption": alone.text,
        "tokens": alone.tokens,
        "model": captioner.name,
    }
    assert as_json.json() == one.json()
    assert "".join(alone.tokens).strip() == alone.text and alone.text
    assert several.json()["captions"] == [
        {"caption": o.text, "tokens": o.tokens, "model": captioner.name}
        for o in (expected(captioner, p, settings) for p in pictures)
    ]
    assert listed.json() == {"captions": [one.json()], "model": captioner.name}


def test_concurrent_requests_batch_and_each_gets_its_single_request_output(captioner):
    # Mixed image sizes and settings, sent at once: batches form per settings, and each answer equals the lone run.
    cases = [(image(seed), Settings(num_beams=1 + (seed % 3 == 0) * 2, max_new_tokens=(None, 6)[seed % 2]))
             for seed in range(24)]  # fmt: skip
    app = create_app(captioner, max_batch_size=8, max_wait_ms=300)

    async def exchange(client):
        requests = [
            client.post("/v1/caption", **form(p, num_beams=s.num_beams, **({"max_new_tokens": s.max_new_tokens}
                                                                          if s.max_new_tokens else {})))
            for p, s in cases
        ]  # fmt: skip
        responses = await asyncio.gather(*requests)
        return responses, (await client.get("/metrics")).text

    responses, metrics = serve(app, exchange)
    for (picture, settings), response in zip(cases, responses):
        alone = expected(captioner, picture, settings)
        assert response.status_code == 200 and response.json()["caption"] == alone.text
        assert response.json()["tokens"] == alone.tokens
    batches, inputs = batch_sizes(metrics)
    assert inputs == len(cases) and batches <= 8  # 4 settings groups of 6, at most 8 per batch: batched, not 24 runs
    assert len({r.json()["caption"] for r in responses}) > 3  # the captions differ: the equality is not vacuous


def test_beams_best_first_with_scores_and_each_batched_request_gets_its_own(captioner):
    # Beam requests with and without return_beams, sent at once, batch by settings; each answer equals the lone run.
    cases = [(image(seed), Settings(num_beams=2 + seed % 2, max_new_tokens=6, return_beams=seed % 3 > 0))
             for seed in range(9)]  # fmt: skip
    app = create_app(captioner, max_batch_size=8, max_wait_ms=300)

    async def exchange(client):
        requests = [client.post("/v1/caption", **form(p, num_beams=s.num_beams, max_new_tokens=6,
                                                      return_beams=s.return_beams)) for p, s in cases]  # fmt: skip
        responses = await asyncio.gather(*requests)
        refused = await client.post("/v1/caption", **form(image(0), return_beams=True))
        return responses, refused, (await client.get("/metrics")).text

    responses, refused, metrics = serve(app, exchange)
    for (picture, settings), response in zip(cases, responses):
        body, alone = response.json(), expected(captioner, picture, settings)
        plain = expected(captioner, picture, Settings(num_beams=settings.num_beams, max_new_tokens=6))
        assert (body["caption"], body["tokens"]) == (alone.text, alone.tokens) == (plain.text, plain.tokens)
        if not settings.return_beams:
            assert "beams" not in body
            continue
        assert [beam["caption"] for beam in body["beams"]] == [text for text, _ in alone.beams]
        assert [beam["score"] for beam in body["beams"]] == pytest.approx([s for _, s in alone.beams], abs=2e-4)
        assert len(body["beams"]) == settings.num_beams and body["beams"][0]["caption"] == body["caption"]
        scores = [beam["score"] for beam in body["beams"]]
        assert scores == sorted(scores, reverse=True) and all(score <= 0 for score in scores)
    assert batch_sizes(metrics)[0] < len(cases)  # batched
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "return_beams"]
    assert "num_beams > 1" in refused.json()["detail"][0]["msg"]


def test_text_composite_generates_batched_with_different_lengths(text_model):
    texts = ["a", "a red circle on the left", "two big blue squares at the top right of a green star", "green"]
    settings = Settings(max_new_tokens=7)
    app = create_app(text_model, max_batch_size=16, max_wait_ms=200)

    async def exchange(client):
        singles = await asyncio.gather(
            *(client.post("/v1/generate", json={"text": t, "max_new_tokens": 7}) for t in texts)
        )
        listed = await client.post("/v1/generate", json={"text": texts, "max_new_tokens": 7})
        wrong = await client.post("/v1/caption", **form(image(0)))
        return singles, listed, wrong, (await client.get("/metrics")).text

    singles, listed, wrong, metrics = serve(app, exchange)
    alone = [text_model.run([t], settings)[0].text for t in texts]
    assert [r.json()["outputs"] for r in singles] == [[a] for a in alone]
    assert listed.json() == {"outputs": alone, "model": text_model.name}
    assert batch_sizes(metrics)[0] == 2  # the four single requests in one batch, the list in another
    assert wrong.status_code == 400 and "/v1/generate" in wrong.json()["detail"]


def test_smallcap_retrieves_prompts_of_different_lengths_and_batches_exactly(smallcap, tmp_path):
    pictures = [image(seed) for seed in range(6)]
    prompts = smallcap.model.prompts(smallcap.datastore.retrieve_for_images(pictures, k=2), len(pictures))
    assert len({len(p) for p in prompts}) > 2  # prompts of several lengths share the batch (left-padded)
    settings = Settings(max_new_tokens=6)
    app = create_app(smallcap, max_batch_size=16, max_wait_ms=300)

    async def exchange(client):
        return await asyncio.gather(*(client.post("/v1/caption", **form(p, max_new_tokens=6)) for p in pictures))

    responses = serve(app, exchange)
    assert [r.json()["caption"] for r in responses] == [expected(smallcap, p, settings).text for p in pictures]
    assert [r.json()["caption"] for r in responses] == smallcap.model.caption(
        pictures, smallcap.processor, smallcap.datastore.retrieve_for_images(pictures, k=2), max_new_tokens=6
    )


def test_reduced_precision_backend_captions_like_the_model_it_loads(tmp_path):
    """`splice serve --dtype bf16 --quantize int8`: the backend's captions are those of the model loaded with the same
    options (`from_pretrained(dtype=, quantize=)`), served through the batcher."""
    model_dir = save_captioner(tmp_path / "model")
    backend = load_backend(model_dir, dtype="bf16", quantize="int8")
    assert backend.model.dtype == torch.bfloat16 and is_quantized(backend.model)
    reference = splice.VisionEncoderDecoderModel.from_pretrained(model_dir, dtype="bf16", quantize="int8")
    pictures = [image(seed) for seed in range(3)]
    app = create_app(backend, max_wait_ms=20)

    async def exchange(client):
        return await asyncio.gather(*(client.post("/v1/caption", **form(p, max_new_tokens=6)) for p in pictures))

    captions = [response.json()["caption"] for response in serve(app, exchange)]
    assert captions == reference.caption(pictures, backend.processor, max_new_tokens=6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["caption", "text"])
def test_a_compiled_backend_warms_up_and_answers_like_the_eager_one(tmp_path, capfd, kind):
    model_dir = (save_captioner if kind == "caption" else save_text_model)(tmp_path / "model")
    torch._dynamo.reset()
    compiled = load_backend(model_dir, compile=True)
    assert "compiling the decoding step" in capfd.readouterr().err  # at load: the warm-up, before any request
    eager = load_backend(model_dir)
    inputs = [image(seed) for seed in range(3)] if kind == "caption" else ["a red circle", "two blue stars", "left"]
    for settings in (Settings(max_new_tokens=6), Settings(num_beams=2, max_new_tokens=6)):  # beams: eagerly
        assert compiled.run(inputs, settings) == eager.run(inputs, settings)


def test_smallcap_datastore_flag_and_errors(tmp_path):
    model_dir = save_smallcap(tmp_path / "model")
    (model_dir / "datastore").rename(tmp_path / "elsewhere")
    assert load_backend(model_dir).datastore is None  # no datastore: the no-retrieval prompt
    assert load_backend(model_dir, datastore=str(tmp_path / "elsewhere")).datastore is not None
    with pytest.raises(ValueError, match="no such directory"):
        load_backend(model_dir, datastore=str(tmp_path / "missing"))


def test_heatmaps_one_png_per_token_and_clear_errors(captioner, tmp_path):
    picture = image(5, (40, 64))

    async def exchange(client):
        maps = await client.post("/v1/caption", **form(picture, heatmap=True, max_new_tokens=6))
        beams = await client.post("/v1/caption", **form(picture, heatmap=True, num_beams=2, return_beams=True))
        return maps, beams

    maps, beams = serve(create_app(captioner), exchange)
    body = maps.json()
    assert body["caption"] == expected(captioner, picture, Settings(max_new_tokens=6)).text
    assert len(body["heatmaps"]) == len(body["tokens"]) > 0
    overlay = Image.open(io.BytesIO(base64.b64decode(body["heatmaps"][0].split(",", 1)[1])))
    assert overlay.format == "PNG" and overlay.size[0] / overlay.size[1] == pytest.approx(64 / 40, rel=0.05)
    assert beams.status_code == 200 and len(beams.json()["heatmaps"]) == len(beams.json()["tokens"])
    assert beams.json()["caption"] == beams.json()["beams"][0]["caption"]


def test_beam_heatmaps_are_the_best_beams_own_cross_attention_step_by_step(captioner):
    # generate(output_attentions=True) gives each step's cross-attention for every beam; beam_indices say which beam
    # each kept token came from. The served maps (one teacher-forced forward over the best beam) must be those.
    model, settings = captioner.model, Settings(num_beams=3, max_new_tokens=6, heatmap=True)
    for seed in range(40):  # an image whose best beam switches beams on the way (else the check is only greedy's)
        pixels = captioner.processor(images=[image(seed)])["pixel_values"]
        model.decoder.set_attn_implementation("eager")
        try:
            generated = model.generate(pixels, num_beams=3, max_new_tokens=6, output_attentions=True,
                                       return_dict_in_generate=True)  # fmt: skip
        finally:
            model.decoder.set_attn_implementation("sdpa")
        steps = int((generated.beam_indices[0] >= 0).sum())
        if generated.beam_indices[0, :steps].any() and steps > 2:
            break
    else:
        raise AssertionError("no image among 40 whose best beam changes beams")
    output = captioner.run([image(seed)], settings)[0]
    ids = generated.sequences[0, 1:].tolist()
    kept = [step for step in range(steps) if ids[step] not in captioner.tokenizer.all_special_ids]
    assert len(output.attention) == len(kept) > 0
    for grid, step in zip(output.attention, kept):
        beam = generated.beam_indices[0, step]
        weights = torch.stack([layer[beam, :, -1, 1:10] for layer in generated.cross_attentions[step]]).mean((0, 1))
        assert torch.allclose(torch.tensor(grid).flatten(), weights / weights.max(), atol=1e-5)


def _normalised_grids(output, side=3):
    for grid in output.attention:
        assert torch.tensor(grid).shape == (side, side) and max(map(max, grid)) == pytest.approx(1.0)
        assert min(map(min, grid)) >= 0.0


def _batched_and_alone(backend, pictures, settings, batch):
    """Pairs (batched output, the same picture run alone), after checking each pair's text and tokens are equal and
    the batched output has one map per token."""
    pairs = [(output, backend.run([picture], settings)[0]) for picture, output in zip(pictures, batch)]
    for output, alone in pairs:
        assert (output.text, output.tokens) == (alone.text, alone.tokens)
        assert len(output.attention) == len(output.tokens)
    return pairs


def test_prefix_heatmaps_are_attention_to_the_prefix_tokens_on_the_patch_grid(tmp_path):
    from splice.serve.torch_backend import eager_forward

    backend = load_backend(save_captioner(tmp_path / "prefix", conditioning="prefix"))
    pictures = [image(seed) for seed in range(3)]
    settings = Settings(max_new_tokens=5, heatmap=True)
    batch = backend.run(pictures, settings)
    for output, alone in _batched_and_alone(backend, pictures, settings, batch):
        assert torch.allclose(torch.tensor(output.attention), torch.tensor(alone.attention), atol=1e-5)
        _normalised_grids(output)
    # The first token's map is the self-attention of the start position to prefix tokens 1..9 (after CLS), by hand.
    pixels = backend.processor(images=pictures[:1])["pixel_values"]
    start = torch.tensor([[backend.model.config.decoder_start_token_id]])
    out = eager_forward(backend.model, {"pixel_values": pixels, "decoder_input_ids": start})
    by_hand = torch.stack(out.decoder_attentions).mean((0, 2))[0, -1, 1:10]  # [B, P+T, P+T]: the start token's row
    assert torch.allclose(torch.tensor(batch[0].attention[0]).flatten(), by_hand / by_hand.max(), atol=1e-5)
    # The same first token over another image: another map (the map follows the image, not only the token).
    other = backend.run([image(7)], settings)[0]
    assert not torch.allclose(torch.tensor(other.attention[0]), torch.tensor(batch[0].attention[0]), atol=1e-3)


def test_pooled_prefix_heatmaps_spread_over_the_bins_and_a_resampler_is_a_clear_400(tmp_path):
    pooled = load_backend(save_captioner(tmp_path / "pool", conditioning="prefix", prefix_length=4))
    settings = Settings(max_new_tokens=4, heatmap=True)
    output = pooled.run([image(1)], settings)[0]
    assert len(output.attention) == len(output.tokens) > 0
    _normalised_grids(output)
    resampler = load_backend(
        save_captioner(tmp_path / "res", conditioning="prefix", prefix_length=4, prefix_reducer="resampler")
    )
    refused = serve(create_app(resampler), lambda client: client.post("/v1/caption", **form(image(1), heatmap=True)))
    detail = refused.json()["detail"]
    assert refused.status_code == 400 and "prefix_reducer='resampler'" in detail and "prefix_length=4" in detail
    assert "not a spatial map" in detail and "prefix_length=None" in detail
    assert serve(create_app(resampler), lambda client: client.get("/health")).json()["heatmaps"] is False


def test_injected_heatmaps_are_the_blocks_attention_and_batch_like_single(tmp_path):
    from splice.conditioning.injected import cross_attention_layers

    backend = load_backend(save_captioner(tmp_path / "injected", conditioning="injected"))
    for _, layer in cross_attention_layers(backend.model):  # open the gates so the blocks shape the captions
        layer.cross_attention.attn_gate.data.fill_(1.0)
    pictures = [image(seed) for seed in range(4)]
    settings = Settings(max_new_tokens=5, heatmap=True)
    batch = backend.run(pictures, settings)
    for output, alone in _batched_and_alone(backend, pictures, settings, batch):
        for grid, grid_alone in zip(output.attention, alone.attention):
            assert torch.allclose(torch.tensor(grid), torch.tensor(grid_alone), atol=1e-5)
            assert torch.tensor(grid).shape == (3, 3) and max(map(max, grid)) == pytest.approx(1.0)


def test_health_metrics_docs_and_page(captioner):
    async def exchange(client):
        await client.post("/v1/caption", **form(image(0), max_new_tokens=3))
        await client.post("/v1/caption", json={"image": "####"})
        paths = ["/health", "/metrics", "/docs", "/openapi.json", "/", "/static/page.js"]
        return [await client.get(path) for path in paths]

    health, metrics, docs, schema, page, script = serve(create_app(captioner), exchange)
    assert health.json() | {"queue_depth": 0} == {
        "status": "ok", "model": captioner.name, "device": "cpu", "task": "caption", "heatmaps": True,
        "queue_depth": 0, "max_batch_size": 16,
    }  # fmt: skip
    for name in ("splice_requests_total", "splice_errors_total", "splice_batch_size_bucket", "splice_queue_depth",
                 "splice_request_latency_seconds_bucket"):  # fmt: skip
        assert name in metrics.text
    assert 'splice_requests_total{endpoint="/v1/caption",status="400"} 1.0' in metrics.text
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    content = schema.json()["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert "/v1/generate" in schema.json()["paths"]
    assert page.status_code == 200 and "page.js" in page.text and "mouseenter" in script.text


def test_caption_cli_writes_one_heatmap_per_token(tmp_path, capsys):
    from splice.cli import main

    model_dir = save_captioner(tmp_path / "model")
    (tmp_path / "images").mkdir()
    for seed in range(3):
        image(seed).save(tmp_path / "images" / f"photo{seed}.png")
    main(["caption", str(model_dir), str(tmp_path / "images"), "--heatmaps", str(tmp_path / "maps"),
          "--max-new-tokens", "4", "--format", "jsonl"])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    main(["caption", str(model_dir), str(tmp_path / "images"), "--max-new-tokens", "4", "--format", "jsonl"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines  # the same captions
    backend = load_backend(model_dir)
    for seed, line in enumerate(lines):
        tokens = expected(backend, image(seed), Settings(max_new_tokens=4)).tokens
        written = sorted((tmp_path / "maps" / f"photo{seed}").glob("*.png"))
        assert len(written) == len(tokens) and line["caption"] == "".join(tokens).strip()
        assert all(Image.open(path).format == "PNG" for path in written)
    main(["caption", str(model_dir), str(tmp_path / "images"), "--heatmaps", str(tmp_path / "beams"),
          "--num-beams", "2", "--max-new-tokens", "4"])  # fmt: skip
    assert sorted((tmp_path / "beams").glob("*/*.png"))  # the best beam's maps
    with pytest.raises(ConfigError, match="--heatmaps .*not with --ray"):
        main(["caption", str(model_dir), str(tmp_path / "images"), "--heatmaps", str(tmp_path / "m"), "--ray",
              "--output", str(tmp_path / "captions.jsonl")])  # fmt: skip
