"""The compiled decoding step (splice/models/compiled_step.py): identical ids to eager decoding where it compiles, a
warned eager fallback where it cannot, one compilation per shape. Compiling takes tens of seconds: those are slow."""

import logging

import pytest
import torch
from tiny import (
    bart_decoder_config,
    gpt2_config,
    llama_config,
    open_gates,
    pixel_values,
    randomize,
    trocr_config,
    vit_config,
)
from transformers import EncoderDecoderCache, StaticCache

import splice
from splice._compat import cache_kwargs, compile_config
from splice.models.compiled_step import CompiledDecoding, unsupported_reason
from splice.onednn import OneDNNLinear, onednn_available

GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


def captioner(decoder_config, **composite) -> splice.VisionEncoderDecoderModel:
    torch.manual_seed(0)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder_config, **composite)
    model = randomize(splice.VisionEncoderDecoderModel(config)).eval()
    if model.conditioning.name == "injected":
        open_gates(model)  # so the encoder reaches the ids
    return model


def test_the_compile_config_makes_transformers_compile_on_a_cpu():
    """The `_compat` flag is what turns transformers' compiled decoding on for a CPU: without it `generate` would
    decode eagerly, silently, and the slow tests below would compare eager with eager."""
    model = captioner(gpt2_config())
    cache = EncoderDecoderCache(
        StaticCache(model.config.decoder, max_cache_len=8), StaticCache(model.config.decoder, 8)
    )
    config = model.generation_config
    config.compile_config = compile_config("default")
    assert model._valid_auto_compile_criteria(cache_kwargs(cache), config)
    config.compile_config = None
    assert not model._valid_auto_compile_criteria(cache_kwargs(cache), config)  # on a CPU, only with the flag


@pytest.mark.parametrize(
    ("decoder", "composite", "reason"),
    [
        (trocr_config, {}, "does not support a static cache"),
        (gpt2_config, {"conditioning": "prefix"}, "prefix conditioning"),
    ],
)
def test_unsupported_models_decode_eagerly_with_a_warning(decoder, composite, reason, caplog):
    model = captioner(decoder(), **composite)
    pixels = pixel_values(vit_config())
    assert reason in unsupported_reason(model, {})
    with caplog.at_level(logging.WARNING, logger="splice.models.compiled_step"):
        ids = CompiledDecoding(model, verbose=False).generate(pixels, **GREEDY)
    assert torch.equal(ids, model.generate(pixels, **GREEDY))
    assert [r.getMessage() for r in caplog.records if reason in r.getMessage()], caplog.text


def test_beams_and_passed_caches_are_not_compiled():
    model = captioner(gpt2_config())
    assert unsupported_reason(model, {}) is None
    assert unsupported_reason(splice.quantize(model, "int8"), {}) is None  # int8 layers compile too
    assert "cache_implementation" in unsupported_reason(model, {"cache_implementation": "dynamic"})
    assert "beam search" in unsupported_reason(model, {"num_beams": 3})  # transformers runs beam steps eagerly


@pytest.mark.parametrize("mode", ["fp32", "bf16 + int8"])
def test_a_decoding_step_traces_as_one_graph(mode):
    """`fullgraph=True` makes any graph break in a decoding step an error: a break splits the step into graphs with
    Python between them (one was there: the validation of fed-back ids read the static cache's length). Dynamo's
    `eager` backend traces without inductor's compilation, so this stays fast; the ids are the eager ones."""
    torch._dynamo.reset()
    model = captioner(gpt2_config())
    pixels = pixel_values(vit_config())
    if mode != "fp32":
        model = splice.quantize(model.to(torch.bfloat16), "int8")
        pixels = pixels.to(torch.bfloat16)
    config = compile_config("default")
    config.backend, config.mode, config.fullgraph = "eager", None, True
    traced = model.generate(pixels, cache_implementation="static", compile_config=config, **GREEDY)
    assert hasattr(model, "_compiled_call")  # the steps went through dynamo
    assert torch.equal(traced, model.generate(pixels, **GREEDY))


def test_an_unknown_mode_is_named():
    with pytest.raises(ValueError, match="mode='fast'.*max-autotune"):
        CompiledDecoding(captioner(gpt2_config()), mode="fast")


@pytest.mark.skipif(not onednn_available(), reason="oneDNN head only on x86 CPUs with oneDNN")
@pytest.mark.parametrize(("dtype", "rows"), [(torch.float32, 2), (torch.bfloat16, 1)])  # oneDNN; one bf16 row: mv
def test_the_decoding_step_head_is_one_op_in_a_traced_graph(dtype, rows):
    """Dynamo traces the head's decoding-step kernel as one opaque op (no graph break, not lowered by inductor), with
    the eager call's output."""
    torch.manual_seed(0)
    head = OneDNNLinear(torch.nn.Linear(32, 99).to(dtype))
    x = torch.randn(rows, 1, 32, dtype=dtype)
    with torch.no_grad():
        graphs = []
        backend = lambda graph, inputs: graphs.append(graph) or graph.forward  # noqa: E731
        traced = torch.compile(head, backend=backend, fullgraph=True)(x)
        assert torch.equal(traced, head(x))
    assert "splice.step_linear" in graphs[0].code, graphs[0].code


@pytest.mark.slow
@pytest.mark.parametrize(
    ("decoder", "generate"),
    [
        (gpt2_config, GREEDY),  # native cross-attention, Conv1D layers, the oneDNN head in the graph
        (bart_decoder_config, GREEDY | {"do_sample": True, "top_k": 1}),  # sampling compiles too (top-k 1: greedy)
        (llama_config, GREEDY),  # injected cross-attention
        (gpt2_config, GREEDY | {"int8": True}),  # bf16 + int8 weight-only layers: the int8 kernel in the graph
    ],
)
def test_compiled_decoding_gives_the_eager_ids_and_compiles_once_per_shape(decoder, generate, capsys):
    torch._dynamo.reset()
    model = captioner(decoder())
    pixels = pixel_values(vit_config())
    generate = dict(generate)
    if generate.pop("int8", False):
        model = splice.quantize(model.to(torch.bfloat16), "int8")
        pixels = pixels.to(torch.bfloat16)
    eager = model.generate(pixels, **generate)
    fast = CompiledDecoding(model)
    assert torch.equal(fast.generate(pixels, **generate), eager)
    assert torch.equal(fast.generate(pixels, **generate), eager)
    printed = capsys.readouterr().out
    assert printed.count("compiling the decoding step") == 1 and "compiled in" in printed, printed
    assert hasattr(model, "_compiled_call")  # transformers took the compiled forward, not eager
    longer = GREEDY | {"max_new_tokens": 8, "min_new_tokens": 8}
    fast.generate(pixels, **longer)  # a new static-cache length: a new shape, compiled (and announced) once more
    assert capsys.readouterr().out.count("compiling the decoding step") == 1
    assert len(fast.compiled_shapes) == 2


def test_a_static_cache_positions_left_padded_prompts_like_the_dynamic_cache():
    """With a static cache transformers hands the step a 4D mask; splice positions left-padded prompts from the 2D
    one `generate` keeps, so a padded prompt continues exactly as it does unpadded (what the compiled step runs)."""
    model = captioner(gpt2_config())
    pixels = pixel_values(vit_config())
    prompts = {"decoder_input_ids": torch.tensor([[0, 1, 5, 7], [1, 9, 4, 3]])}
    prompts["decoder_attention_mask"] = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # the first row left-padded
    static = model.generate(pixels, cache_implementation="static", **prompts, **GREEDY)
    assert torch.equal(static, model.generate(pixels, **prompts, **GREEDY))
    alone = model.generate(pixels[:1], decoder_input_ids=prompts["decoder_input_ids"][:1, 1:], **GREEDY)
    assert torch.equal(static[:1, 1:], alone)


@pytest.mark.slow
def test_caption_cli_compile_gives_the_eager_captions(tmp_path, capsys):
    """`splice caption --compile`: the same captions as eager decoding, batches of two sizes (the last one shorter),
    its lines about compiling on standard error, never among the captions."""
    from serve_tiny import image, save_captioner

    from splice.cli import main

    torch._dynamo.reset()
    model_dir = save_captioner(tmp_path / "model")
    (tmp_path / "images").mkdir()
    for seed in range(5):
        image(seed).save(tmp_path / "images" / f"photo{seed}.png")
    command = ["caption", str(model_dir), str(tmp_path / "images"), "--batch-size", "2", "--max-new-tokens", "5"]
    main(command)
    eager = capsys.readouterr().out
    main([*command, "--compile"])
    compiled = capsys.readouterr()
    assert compiled.out == eager and len(eager.splitlines()) == 5
    assert "compiling the decoding step" in compiled.err and "compiled in" in compiled.err, compiled.err


@pytest.mark.parametrize("other", [["--heatmaps", "maps"], ["--ray", "--output", "captions.jsonl"]])
def test_caption_cli_compile_refuses_the_paths_that_decode_eagerly(tmp_path, other, monkeypatch):
    from serve_tiny import image, save_captioner

    from splice.cli import main
    from splice.training.config import ConfigError

    monkeypatch.chdir(tmp_path)  # the relative paths in `other`: nothing is written, and if it were, not in the tree
    model_dir = save_captioner(tmp_path / "model")
    image(0).save(tmp_path / "photo.png")
    with pytest.raises(ConfigError, match=f"--compile: not with {other[0]}"):
        main(["caption", str(model_dir), str(tmp_path / "photo.png"), "--compile", *other])
