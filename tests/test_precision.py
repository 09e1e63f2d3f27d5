"""Reduced precision (splice/precision.py): int8 weight-only layers for nn.Linear *and* GPT-2's Conv1D, bf16 end to
end, agreement with fp32 on a (tiny) trained captioner, loading with `dtype` / `quantize`, and refusing to save."""

import pytest
import torch
import torch.nn.functional as F
from tiny import gpt2_config, llama_config, pixel_values, randomize, vit_config
from torch import nn
from transformers.pytorch_utils import Conv1D

import splice
from splice import precision
from splice.onednn import OneDNNLinear
from splice.precision import Int8WeightOnlyLinear, is_quantized, quantize

GREEDY = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}
# Floors for agreement with fp32 greedy ids on the trained model below; measured 1.0 for every mode (teacher forced
# and free running) when written. A floor, not a target: random-weight models with flat logits agree less (the
# benchmark reports those numbers, benchmarks/README.md).
AGREEMENT_FLOOR = 0.95


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_features", [32, 37])  # 37: bf16 goes around torch's kernel (it crashes at K % 16 != 0)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("length", [3, 20])  # 2 x 3 rows: the int8 kernel; 2 x 20: dequantized weight + GEMM
def test_int8_layer_is_the_product_with_its_rounded_weight(kind, in_features, dtype, length, monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, 24) if kind == "linear" else Conv1D(24, in_features)
    if kind == "conv1d":
        nn.init.normal_(layer.bias, std=0.1)
    x = torch.randn(2, length, in_features)
    quantized = Int8WeightOnlyLinear.from_module(layer)
    calls = []
    kernel = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *args: calls.append(1) or kernel(*args))
    with torch.no_grad():
        got = quantized(x.to(dtype))
        exact = layer(x)
        rounded = F.linear(x, quantized.dequantized_weight(torch.float32), layer.bias)
    kernel_runs = 2 * length <= precision.KERNEL_MAX_ROWS and (dtype == torch.float32 or in_features % 16 == 0)
    assert calls == ([1] if kernel_runs else [])
    assert got.shape == exact.shape == (2, length, 24) and got.dtype == dtype
    assert quantized.weight_int8.dtype == torch.int8 and quantized.weight_int8.shape == (24, in_features)
    # fp32 rows go to the kernel in bf16 where K allows (its fast path), so only the dequantized product is exact fp32
    exact_fp32 = dtype == torch.float32 and not (kernel_runs and in_features % 16 == 0)
    assert relative_error(got, rounded) <= (1e-5 if exact_fp32 else 2e-2)
    assert relative_error(got, exact) <= (1e-2 if exact_fp32 else 3e-2)  # int8 rounding: ~0.4% per weight


def captioner(decoder_config, seed: int = 0) -> splice.VisionEncoderDecoderModel:
    torch.manual_seed(seed)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder_config)
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


@pytest.mark.parametrize("decoder", ["gpt2", "llama"])  # Conv1D blocks (native) / nn.Linear blocks (injected)
def test_quantize_swaps_every_linear_and_conv1d_but_the_head_and_embeddings(decoder):
    model = captioner(gpt2_config() if decoder == "gpt2" else llama_config())
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    assert quantize(model, "int8") is model
    swapped = {n for n, m in model.named_modules() if isinstance(m, Int8WeightOnlyLinear)}
    left = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    assert left == ["decoder.lm_head"] and swapped == set(linears) - set(left)
    assert any(".c_attn" in n or ".q_proj" in n for n in swapped)  # the attention blocks, not just the MLP
    assert model.get_output_embeddings() is head and model.get_input_embeddings() is embeddings
    assert head.weight.dtype == embeddings.weight.dtype == torch.float32
    quantize(model, "int8")  # again: nothing left to swap, nothing changes
    assert {n for n, m in model.named_modules() if isinstance(m, Int8WeightOnlyLinear)} == swapped
    with torch.no_grad():
        assert model.generate(pixel_values(model.config.encoder, batch=2), **GREEDY).shape == (2, 11)


def test_quantize_names_the_modes_it_has():
    with pytest.raises(ValueError, match=r"'int4'.*\('int8',\)"):
        quantize(captioner(gpt2_config()), "int4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, torch.Tensor]:
    """A tiny ViT-GPT-2 trained to caption 8 images with 8 different 10-token captions (a few seconds), saved."""
    torch.manual_seed(0)
    model = captioner(gpt2_config(n_embd=64, n_inner=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.train()
    images = pixel_values(model.config.encoder, batch=8, seed=3)
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(3, model.config.decoder.vocab_size, (8, 10), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and immune to spin-waiting on a busy machine
    try:
        for _ in range(100):
            loss = model(pixel_values=images, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        learned = (model.generate(images, **GREEDY)[:, 1:] == labels).float().mean().item()
    assert learned >= 0.95, f"the tiny captioner did not learn its captions (loss {loss.item():.3f}, {learned:.0%})"
    directory = tmp_path_factory.mktemp("trained")
    model.save_pretrained(directory)
    return str(directory), images


def agreement(model, reference, images: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(free-running, teacher-forced) fraction of new tokens equal to fp32's greedy ids."""
    images = images.to(model.dtype)
    with torch.no_grad():
        free = (model.generate(images, **GREEDY) == expected)[:, 1:].float().mean().item()
        logits = model(pixel_values=images, decoder_input_ids=expected[:, :-1]).logits
    forced = (logits.argmax(-1) == expected[:, 1:]).float().mean().item()
    return free, forced


@pytest.mark.parametrize(("dtype", "mode"), [("bf16", None), ("fp32", "int8"), ("bf16", "int8")])
def test_reduced_precision_agrees_with_fp32_on_a_trained_model(trained, dtype, mode):
    directory, images = trained
    reference = splice.VisionEncoderDecoderModel.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference.generate(images, **GREEDY)
    model = splice.VisionEncoderDecoderModel.from_pretrained(directory, dtype=dtype, quantize=mode)
    assert model.dtype == precision.resolve_dtype(dtype) and is_quantized(model) == (mode is not None)
    free, forced = agreement(model, reference, images, expected)
    assert free >= AGREEMENT_FLOOR and forced >= AGREEMENT_FLOOR, (free, forced)


def test_from_pretrained_quantize_equals_quantizing_the_loaded_model(trained):
    directory, images = trained
    loaded = splice.VisionEncoderDecoderModel.from_pretrained(directory, dtype="bf16", quantize="int8")
    by_hand = quantize(splice.VisionEncoderDecoderModel.from_pretrained(directory).to(torch.bfloat16), "int8")
    with torch.no_grad():
        assert torch.equal(loaded.generate(images.bfloat16(), **GREEDY), by_hand.generate(images.bfloat16(), **GREEDY))
    assert splice.quantize is quantize


def test_a_quantized_model_is_not_saved_and_says_how_to_requantize(trained, tmp_path):
    directory, _ = trained
    model = splice.VisionEncoderDecoderModel.from_pretrained(directory, quantize="int8")
    with pytest.raises(ValueError, match=r"quantized.*from_pretrained\(path, quantize='int8'\)"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_bf16_lm_head_at_batch_1_is_a_matrix_vector_product(monkeypatch):
    model = captioner(gpt2_config()).to(torch.bfloat16)
    head = model.get_output_embeddings()
    calls = []
    mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *args: calls.append(1) or mv(*args))
    one, two = (torch.randn(rows, 1, head.in_features, dtype=torch.bfloat16) for rows in (1, 2))
    wrapped = [1] if isinstance(head, OneDNNLinear) else []  # the head splice wraps where oneDNN runs (x86 CPUs)
    with torch.no_grad():
        assert relative_error(head(one), F.linear(one, head.weight)) <= 1e-2 and calls == wrapped
        assert torch.equal(head(two), F.linear(two, head.weight)) and calls == wrapped  # two rows: F.linear's
