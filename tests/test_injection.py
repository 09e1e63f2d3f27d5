import copy
import warnings

import pytest
import torch
import transformers
from tiny import DECODER_FAMILIES, VOCAB, decoder_config, open_gates
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from splice._compat import cache_kwargs
from splice.conditioning.injected import (
    CrossAttentionLayer,
    GatedCrossAttention,
    cross_attention_kwargs,
    cross_attention_layers,
    cross_attention_parameters,
    find_decoder_layers,
    inject_cross_attention,
)

ENC_DIM = 24  # deliberately different from every decoder width
NUM_LAYERS = 4
# On top of the tiny family configs: OPT's word_embed_proj_dim (32) != hidden_size, so that the layers run at
# hidden_size, which injection must pick.
WIDER = {"opt": {"hidden_size": 48}}


def make_decoder(family: str, num_layers: int = NUM_LAYERS) -> nn.Module:
    config = decoder_config(family, num_hidden_layers=num_layers, **WIDER.get(family, {}))
    torch.manual_seed(0)
    return getattr(transformers, DECODER_FAMILIES[family].causal_lm)(config).eval()


def encoder_inputs(batch_size: int = 2, length: int = 5, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(batch_size, length, ENC_DIM, generator=generator)  # [B, S, E]
    mask = torch.ones(batch_size, length, dtype=torch.long)
    mask[0, -2:] = 0  # the first sample has two padded encoder positions
    return states, mask


def input_ids(batch_size: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch_size, length), generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def logits(model: nn.Module, ids: torch.Tensor, *encoder_side) -> torch.Tensor:
    """The decoder's logits; `encoder_side` = (states, mask) for an injected decoder."""
    return model(input_ids=ids, **(cross_attention_kwargs(*encoder_side) if encoder_side else {})).logits


@torch.no_grad()
def greedy(model: nn.Module, ids: torch.Tensor, states, mask, steps: int, use_cache: bool) -> torch.Tensor:
    """Greedy decoding of an injected bare decoder (its `generate` takes no encoder side): with caches, each step
    feeds one token and reads the keys/values projected at the first step; without, each step re-runs everything."""
    self_cache, key_values = (DynamicCache(), DynamicCache()) if use_cache else (None, None)
    fed = ids
    for _ in range(steps):
        out = model(input_ids=fed, **cache_kwargs(self_cache), use_cache=use_cache,
                    **cross_attention_kwargs(states, mask, key_values))  # fmt: skip
        ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        fed = ids[:, -1:] if use_cache else ids
    return ids


families = pytest.mark.parametrize("family", list(DECODER_FAMILIES))


@families
def test_find_decoder_layers(family):
    model = make_decoder(family)
    path, layers = find_decoder_layers(model)
    assert path == DECODER_FAMILIES[family].layers
    assert len(layers) == NUM_LAYERS
    assert layers is model.get_submodule(path)
    assert find_decoder_layers(model, DECODER_FAMILIES[family].layers)[1] is layers


def test_find_decoder_layers_errors():
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = LlamaConfig(num_hidden_layers=3)
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
            self.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])  # wrong length

    with pytest.raises(ValueError, match="cross_attention_layers_attr"):
        find_decoder_layers(NoLayers())
    with pytest.raises(ValueError, match="cross_attention_layers_attr"):
        find_decoder_layers(NoLayers(), "blocks")  # exists but is not a ModuleList
    with pytest.raises(ValueError, match="cross_attention_layers_attr"):
        find_decoder_layers(NoLayers(), "model.layers")  # does not exist


def test_find_decoder_layers_prefers_blocks_over_same_length_list():
    model = make_decoder("llama")
    # A decoy list of the same length whose children are smaller than the real blocks.
    model.decoy = nn.ModuleList([nn.LayerNorm(4) for _ in range(NUM_LAYERS)])
    assert find_decoder_layers(model)[0] == "model.layers"


@families
def test_gate_zero_is_exact_identity(family):
    model = make_decoder(family)
    bare = copy.deepcopy(model)
    ids = input_ids()
    inject_cross_attention(model, ENC_DIM, feed_forward=True)
    states, mask = encoder_inputs()
    injected = logits(model, ids, states, mask)
    assert torch.equal(injected, logits(bare, ids))
    # The blocks did run (and would have changed the logits with any other gate value).
    open_gates(model, 1e-3)
    assert not torch.equal(logits(model, ids, states, mask), injected)


@families
def test_open_gates_use_encoder_states_and_mask(family):
    model = make_decoder(family)
    bare = copy.deepcopy(model)
    ids = input_ids()
    inject_cross_attention(model, ENC_DIM, every=2)
    open_gates(model)
    states, mask = encoder_inputs()
    reference = logits(model, ids, states, mask)
    assert not torch.allclose(reference, logits(bare, ids))

    # Changing only masked encoder positions (sample 0, last two) leaves the logits unchanged.
    masked_change = states.clone()
    masked_change[0, -2:] += 10.0
    assert torch.equal(logits(model, ids, masked_change, mask), reference)

    # Changing an unmasked position changes the logits of that sample only.
    unmasked_change = states.clone()
    unmasked_change[0, 0] += 1.0
    changed = logits(model, ids, unmasked_change, mask)
    assert not torch.allclose(changed[0], reference[0])
    assert torch.equal(changed[1], reference[1])

    # Without a mask the padded positions are attended to.
    assert not torch.allclose(logits(model, ids, states)[0], reference[0])

    # A fully masked sample gets no cross-attention at all (and no NaN).
    full_mask = mask.clone()
    full_mask[1] = 0
    out = logits(model, ids, states, full_mask)
    assert not out.isnan().any()
    assert torch.equal(out[1], logits(bare, ids)[1])
    assert torch.equal(out[0], reference[0])


@families
def test_generate_with_cache_matches_without(family):
    model = make_decoder(family)
    inject_cross_attention(model, ENC_DIM, feed_forward=True)
    open_gates(model)
    states, mask = encoder_inputs()
    ids = input_ids()
    cached = greedy(model, ids, states, mask, steps=6, use_cache=True)
    uncached = greedy(model, ids, states, mask, steps=6, use_cache=False)
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, uncached)


@families
def test_key_value_projection_runs_once_per_generate(family):
    model = make_decoder(family)
    inject_cross_attention(model, ENC_DIM)
    open_gates(model)
    blocks = [layer.cross_attention for _, layer in cross_attention_layers(model)]
    assert len(blocks) == NUM_LAYERS
    calls = {"k": 0, "v": 0}

    def counter(key):
        def hook(module, args, output):
            calls[key] += 1

        return hook

    for block in blocks:
        block.k_proj.register_forward_hook(counter("k"))
        block.v_proj.register_forward_hook(counter("v"))
    states, mask = encoder_inputs()
    ids = input_ids()
    # A keys/values cache for the whole decoding: each block projects once, then every step reads the cache.
    generated = greedy(model, ids, states, mask, steps=6, use_cache=True)
    assert generated.shape[1] == ids.shape[1] + 6
    assert calls == {"k": len(blocks), "v": len(blocks)}

    # Without a cache every call projects, so nothing stale can be read: an in-place weight update (e.g. an
    # optimizer step) is seen at the next call.
    before = logits(model, ids, states, mask)
    assert calls["k"] == 2 * len(blocks)
    with torch.no_grad():
        blocks[-1].k_proj.weight.mul_(3.0)
    after = logits(model, ids, states, mask)
    assert calls["k"] == 3 * len(blocks)
    assert not torch.allclose(before, after)


def test_every_and_reduce_factor():
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4
    )
    model = LlamaForCausalLM(config)
    wrapped = copy.deepcopy(model)
    inject_cross_attention(wrapped, ENC_DIM, every=2)
    layers = find_decoder_layers(wrapped)[1]
    assert [isinstance(layer, CrossAttentionLayer) for layer in layers] == [False, True, False, True]

    hidden = 128
    for factor in (1, 2, 4, 8, 16):
        for feed_forward in (False, True):
            decoder = copy.deepcopy(model)
            inject_cross_attention(decoder, ENC_DIM, reduce_factor=factor, feed_forward=feed_forward)
            inner = hidden // factor
            expected = (hidden * inner + inner) + 2 * (ENC_DIM * inner + inner) + (inner * hidden + hidden)
            expected += 2 * hidden + 1  # query LayerNorm + attention gate
            if feed_forward:
                expected += 2 * hidden + (hidden * 4 * hidden + 4 * hidden) + (4 * hidden * hidden + hidden) + 1
            counted = sum(param.numel() for _, param in cross_attention_parameters(decoder))
            assert counted == 4 * expected, (factor, feed_forward)
            block = find_decoder_layers(decoder)[1][0].cross_attention
            assert block.head_dim == inner // 4

    for bad in (3, 64, 0):  # 128 / 3 not integral; 128 / 64 = 2 not divisible by 4 heads; 0 meaningless
        with pytest.raises(ValueError, match="cross_attention_reduce_factor"):
            inject_cross_attention(copy.deepcopy(model), ENC_DIM, reduce_factor=bad)


@families
def test_gradient_checkpointing(family):
    model = make_decoder(family, num_layers=2)
    inject_cross_attention(model, ENC_DIM, feed_forward=True)
    open_gates(model)
    states, mask = encoder_inputs()
    ids = input_ids()

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        decoder = copy.deepcopy(model).train()
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the method is deprecated for an alias in v5
                decoder.activation_checkpointing_enable()
            wrappers = [layer for _, layer in cross_attention_layers(decoder)]
            assert all(wrapper.base_layer.gradient_checkpointing for wrapper in wrappers)
        decoder.zero_grad()
        decoder(input_ids=ids, labels=ids, **cross_attention_kwargs(states, mask)).loss.backward()
        return {name: param.grad for name, param in cross_attention_parameters(decoder)}

    with_checkpointing = gradients(True)
    without = gradients(False)
    assert with_checkpointing.keys() == without.keys() and len(without) > 0
    for name, grad in with_checkpointing.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, without[name], msg=name)


@families
def test_state_dict_attributes_and_double_injection(family):
    model = make_decoder(family)
    path = DECODER_FAMILIES[family].layers
    base_layer = find_decoder_layers(model)[1][1]
    base_keys = set(base_layer.state_dict())
    inject_cross_attention(model, ENC_DIM, every=2)
    keys = set(model.state_dict())
    assert {f"{path}.1.base_layer.{key}" for key in base_keys} <= keys
    assert f"{path}.1.cross_attention.q_proj.weight" in keys
    assert f"{path}.1.cross_attention.attn_gate" in keys
    assert not any(key.startswith(f"{path}.0.base_layer") for key in keys)  # layer 0 is not wrapped
    assert {name for name, _ in cross_attention_parameters(model)} == {
        key for key in keys if ".cross_attention." in key
    }

    # Attribute accesses on the layer (self_attn, attention_type, layer_idx, ...) reach the original layer.
    wrapper = find_decoder_layers(model)[1][1]
    assert wrapper.base_layer is base_layer
    for name, child in base_layer.named_children():
        assert getattr(wrapper, name) is child
    for name in ("attention_type", "layer_idx", "hidden_size"):
        if hasattr(base_layer, name):
            assert getattr(wrapper, name) == getattr(base_layer, name)
    with pytest.raises(AttributeError):
        wrapper.does_not_exist  # noqa: B018

    with pytest.raises(ValueError, match="already injected"):
        inject_cross_attention(model, ENC_DIM)

    # The state dict round-trips into a freshly injected copy of the bare architecture.
    open_gates(model)
    fresh = make_decoder(family)
    inject_cross_attention(fresh, ENC_DIM, every=2)
    fresh.load_state_dict(model.state_dict())
    states, mask = encoder_inputs()
    assert torch.equal(logits(fresh, input_ids(), states, mask), logits(model, input_ids(), states, mask))


@families
def test_output_hidden_states_include_cross_attention(family):
    model = make_decoder(family)
    inject_cross_attention(model, ENC_DIM)
    open_gates(model)
    layer_inputs = []
    for _, layer in cross_attention_layers(model):
        layer.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
    states, mask = encoder_inputs()
    with torch.no_grad():
        hidden_states = model(
            input_ids=input_ids(), output_hidden_states=True, **cross_attention_kwargs(states, mask)
        ).hidden_states
    assert len(hidden_states) == NUM_LAYERS + 1
    # The output recorded for layer i is the input of layer i + 1, i.e. it includes the cross-attention.
    for index in range(1, NUM_LAYERS):
        assert torch.equal(hidden_states[index], layer_inputs[index])


def test_missing_encoder_states_raises():
    model = make_decoder("llama")
    inject_cross_attention(model, ENC_DIM)
    with pytest.raises(RuntimeError, match="encoder states"):
        logits(model, input_ids())
    logits(model, input_ids(), *encoder_inputs())
    with pytest.raises(RuntimeError, match="encoder states"):  # nothing from the previous call is kept
        logits(model, input_ids())


def test_custom_layers_attr():
    model = make_decoder("gpt2")
    assert inject_cross_attention(model, ENC_DIM, layers_attr="transformer.h", every=4) == 1
    assert [name for name, _ in cross_attention_layers(model)] == ["transformer.h.3"]


def test_tuple_outputs_are_preserved():
    class TupleLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.layer_idx = 7

        def forward(self, hidden_states, attention_mask=None):
            return self.proj(hidden_states), "attn-weights", attention_mask

    layer = CrossAttentionLayer(TupleLayer(), GatedCrossAttention(16, ENC_DIM, num_heads=2))
    with torch.no_grad():
        layer.cross_attention.attn_gate.fill_(0.5)
    hidden = torch.randn(2, 3, 16)
    states, mask = encoder_inputs()
    out = layer(hidden, attention_mask="mask", **cross_attention_kwargs(states, mask))
    assert isinstance(out, tuple) and out[1:] == ("attn-weights", "mask")
    base_out = layer.base_layer(hidden)[0]
    expected = layer.cross_attention(base_out, states, mask)
    torch.testing.assert_close(out[0], expected)
    assert not torch.allclose(out[0], base_out)
    assert layer.layer_idx == 7
