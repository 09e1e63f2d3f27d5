"""Generation fast paths: the LM head on oneDNN, and beam search leaving cross-attention keys/values in place."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import gpt2_config, llama_config, mkldnn_enabled, pixel_values, randomize, vit_config  # noqa: E402
from torch import nn  # noqa: E402
from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: E402

import splice  # noqa: E402
from splice.onednn import OneDNNLinear, onednn_available, onednn_lm_head  # noqa: E402

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN linears need an x86 CPU build with oneDNN")


def spliced(decoder_config, **kw) -> splice.VisionEncoderDecoderModel:
    torch.manual_seed(0)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder_config, **kw)
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16), (1, 1, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    base = nn.Linear(16, 300, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        got, expected = OneDNNLinear(base)(x), base(x)
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


def test_lm_head_is_wrapped_only_inside_the_block_and_restored():
    model = spliced(gpt2_config())
    head = model.decoder.lm_head
    keys = set(model.state_dict())
    with onednn_lm_head(model.decoder) as wrapped:
        assert wrapped == onednn_available()
        if wrapped:
            assert isinstance(model.decoder.lm_head, OneDNNLinear)
            assert model.decoder.lm_head.base_layer is head
    assert model.decoder.lm_head is head
    assert set(model.state_dict()) == keys
    # PyTorch's own switch turns it off.
    with mkldnn_enabled(False), onednn_lm_head(model.decoder) as wrapped:
        assert not wrapped and model.decoder.lm_head is head


@needs_onednn
def test_heads_it_cannot_run_exactly_are_left_alone():
    model = spliced(gpt2_config())
    head = model.decoder.lm_head
    handle = head.register_forward_pre_hook(lambda module, args: None)  # hooks may move weights (accelerate)
    with onednn_lm_head(model.decoder) as wrapped:
        assert not wrapped and model.decoder.lm_head is head
    handle.remove()
    model.decoder.to(torch.bfloat16)
    with onednn_lm_head(model.decoder) as wrapped:
        assert not wrapped and model.decoder.lm_head is head


@needs_onednn
@pytest.mark.parametrize(
    ("decoder_config", "kw"),
    [(gpt2_config(), {}), (llama_config(), {"conditioning": "injected"})],
    ids=["gpt2", "llama"],
)
def test_generate_uses_the_onednn_head_and_gives_the_same_ids(decoder_config, kw, monkeypatch):
    model = spliced(decoder_config, **kw)
    if kw:  # open the injected gates so the image matters
        gates = [p for name, p in model.named_parameters() if name.endswith("gate")]
        assert gates
        with torch.no_grad():
            for gate in gates:
                gate.fill_(0.5)
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
    assert isinstance(model.decoder.get_output_embeddings(), nn.Linear)  # put back after generate


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
