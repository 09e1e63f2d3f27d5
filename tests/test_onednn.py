"""Generation fast paths: the LM head on oneDNN, and beam search leaving cross-attention keys/values in place."""

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny import gpt2_config, llama_config, mkldnn_enabled, open_gates, pixel_values, randomize, vit_config
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import splice
from splice import onednn
from splice.onednn import OneDNNLinear, onednn_available, use_onednn_lm_head

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN linears need an x86 CPU build with oneDNN")


def spliced(decoder_config, **kw) -> splice.VisionEncoderDecoderModel:
    torch.manual_seed(0)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder_config, **kw)
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 1, 16), (2, 1, 16), (1, 1, 16)])  # decoding steps: the oneDNN path
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear(shape, bias, monkeypatch):
    torch.manual_seed(0)
    base = nn.Linear(16, 300, bias=bias)
    x = torch.randn(shape)
    calls = []
    kernel = onednn._linear_pointwise
    monkeypatch.setattr(onednn, "_linear_pointwise", lambda *args: calls.append(1) or kernel(*args))
    with torch.no_grad():
        got, expected = OneDNNLinear(base)(x), base(x)
    assert calls == [1]  # the comparison is oneDNN against F.linear, not F.linear against itself
    assert got.shape == expected.shape == (*shape[:-1], 300)
    assert relative_error(got, expected) <= 1e-6
    assert OneDNNLinear(base).weight is base.weight and OneDNNLinear(base).bias is base.bias


@needs_onednn
def test_onednn_linear_defers_to_the_layer_under_autograd_and_autocast():
    base = nn.Linear(16, 8)
    x = torch.randn(2, 16)
    out = OneDNNLinear(base)(x)
    assert out.grad_fn is not None  # autograd path: the layer's own F.linear, gradients flow
    out.sum().backward()
    assert base.weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert OneDNNLinear(base)(x).dtype == torch.bfloat16  # autocast honoured, as F.linear would


def test_lm_head_is_wrapped_once_at_build_with_the_same_parameters_and_keys():
    model = spliced(gpt2_config())
    head = model.decoder.lm_head
    assert isinstance(head, OneDNNLinear) == onednn_available()
    assert isinstance(head, nn.Linear)  # PEFT and every `isinstance(nn.Linear)` check still see a linear layer
    # The head shares the tied embedding: same parameter, same state-dict keys as transformers' GPT-2.
    assert head.weight is model.decoder.transformer.wte.weight
    bare = T.GPT2LMHeadModel(model.config.decoder)
    assert {k for k in model.state_dict() if k.startswith("decoder.")} == {f"decoder.{k}" for k in bare.state_dict()}
    # Generating changes nothing in the module tree (two threads may generate at once).
    before = [(name, id(module)) for name, module in model.named_modules()]
    model.generate(pixel_values(vit_config(), batch=1), max_new_tokens=2)
    assert [(name, id(module)) for name, module in model.named_modules()] == before


@needs_onednn
def test_heads_it_cannot_run_exactly_are_left_alone():
    decoder = T.GPT2LMHeadModel(gpt2_config())
    head = decoder.lm_head
    handle = head.register_forward_pre_hook(lambda module, args: None)  # hooks may move weights (accelerate)
    assert not use_onednn_lm_head(decoder) and decoder.lm_head is head
    handle.remove()
    assert use_onednn_lm_head(decoder) and decoder.lm_head.weight is head.weight
    assert not use_onednn_lm_head(decoder)  # once only


@needs_onednn
def test_a_loaded_model_gets_the_head_and_other_dtypes_run_f_linear(tmp_path, monkeypatch):
    spliced(gpt2_config()).save_pretrained(tmp_path)
    model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)  # built on the meta device, then loaded
    assert isinstance(model.decoder.lm_head, OneDNNLinear)
    assert model.decoder.lm_head.weight is model.decoder.transformer.wte.weight
    calls = []
    monkeypatch.setattr(onednn, "_linear_pointwise", lambda *args: calls.append(1) or F.linear(*args[:3]))
    model.to(torch.bfloat16)
    with torch.no_grad():
        model.decoder.lm_head(torch.randn(2, 1, model.config.decoder.n_embd, dtype=torch.bfloat16))
    assert calls == []  # bf16 is F.linear's


@needs_onednn
def test_only_decoding_step_shapes_take_onednn(monkeypatch):
    head = OneDNNLinear(nn.Linear(16, 40))
    calls = []
    monkeypatch.setattr(onednn, "_linear_pointwise", lambda *args: calls.append(1) or F.linear(*args[:3]))
    with torch.no_grad():
        head(torch.randn(3, 1, 16))  # a decoding step: one position per row
        assert len(calls) == 1
        head(torch.randn(3, 5, 16))  # a forward over a sequence stays bit-identical to F.linear
        with mkldnn_enabled(False):
            head(torch.randn(3, 1, 16))
    head(torch.randn(3, 1, 16, requires_grad=True))  # autograd
    assert len(calls) == 1


@needs_onednn
@pytest.mark.parametrize(
    ("decoder_config", "kw"),
    [(gpt2_config(), {}), (llama_config(), {"conditioning": "injected"})],
    ids=["gpt2", "llama"],
)
def test_generate_uses_the_onednn_head_and_gives_the_same_ids(decoder_config, kw, monkeypatch):
    model = spliced(decoder_config, **kw)
    if kw:  # open the injected gates so the image matters
        open_gates(model)
    calls = []
    forward = OneDNNLinear.forward
    monkeypatch.setattr(OneDNNLinear, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    pixels = pixel_values(vit_config(), batch=2, seed=3)
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "output_scores": True, "return_dict_in_generate": True}
    for num_beams in (1, 3):
        calls.clear()
        fast = model.generate(pixels, num_beams=num_beams, **settings)
        assert len(calls) == 6  # one head call per step
        with mkldnn_enabled(False):
            exact = model.generate(pixels, num_beams=num_beams, **settings)
        assert torch.equal(fast.sequences, exact.sequences), (fast.sequences.tolist(), exact.sequences.tolist())
        assert (
            len(set(fast.sequences[:, 1:].flatten().tolist())) > 2
        )  # not one repeated token: equality means something
        for got, expected in zip(fast.scores, exact.scores):
            finite = torch.isfinite(expected)
            assert torch.equal(finite, torch.isfinite(got))
            assert relative_error(got[finite], expected[finite]) <= 1e-5


def test_beam_reorder_moves_self_attention_only():
    model = spliced(gpt2_config())
    torch.manual_seed(0)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    self_keys, cross_keys = torch.randn(4, 2, 3, 8), torch.randn(4, 2, 5, 8)
    cache.self_attention_cache.update(self_keys, self_keys + 1, 0)
    cache.cross_attention_cache.update(cross_keys, cross_keys + 1, 0)
    cross_before = cache.cross_attention_cache.layers[0].keys
    beam_idx = torch.tensor([1, 1, 3, 2])  # two inputs x two beams: beams move within their input only
    assert model._reorder_cache(cache, beam_idx) is cache
    assert torch.equal(cache.self_attention_cache.layers[0].keys, self_keys[beam_idx])
    assert torch.equal(cache.self_attention_cache.layers[0].values, (self_keys + 1)[beam_idx])
    assert cache.cross_attention_cache.layers[0].keys is cross_before  # not copied


def test_beam_search_with_a_cache_of_decoder_only_type():
    # Injected conditioning decodes on the decoder's own cache: the reorder must take it as well.
    model = spliced(llama_config(), conditioning="injected")
    cache = DynamicCache()
    keys = torch.randn(4, 2, 3, 8)
    cache.update(keys, keys, 0)
    model._reorder_cache(cache, torch.tensor([0, 0, 2, 3]))
    assert torch.equal(cache.layers[0].keys, keys[torch.tensor([0, 0, 2, 3])])
