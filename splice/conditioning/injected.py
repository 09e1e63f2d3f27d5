"""Gated cross-attention injected into any decoder-only causal LM from `transformers`, PEFT style.

No modeling file is forked: the decoder's list of transformer blocks is located, and selected blocks are replaced by
a [`CrossAttentionLayer`] that keeps the original block untouched as `base_layer` and runs a [`GatedCrossAttention`] on
its output. The encoder states travel with each call, as one keyword argument that transformers' decoders pass down to
their layers (`decoder(..., **cross_attention_kwargs(states, mask))`); a wrapped layer run without it raises. Inside
`generate` the projected keys/values live in the generation cache (`EncoderDecoderCache.cross_attention_cache`, as
native encoder-decoder models keep theirs): projected once per call, nothing kept on the modules.

State-dict keys follow PEFT: `model.layers.1.base_layer.self_attn.q_proj.weight` (original weights, one extra path
component) and `model.layers.1.cross_attention.q_proj.weight` (new weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache

from .._compat import active_output_collector, cache_kwargs
from ..encoders import encoder_hidden_size
from .base import _NUM_LAYERS_KEYS, Conditioning, decoder_dimensions, self_attention_cache, text_config


def find_decoder_layers(model: nn.Module, layers_attr: str | None = None) -> tuple[str, nn.ModuleList]:
    """
    Locate the decoder's list of transformer blocks.

    Args:
        model (`nn.Module`):
            The decoder, usually a `*ForCausalLM` model.
        layers_attr (`str`, *optional*):
            Dotted path of the `nn.ModuleList` holding the blocks (e.g. `"model.layers"`, `"transformer.h"`). When not
            given, the list is found generically: among the `nn.ModuleList`s whose children all share one class and
            whose length equals the text config's `num_hidden_layers` (or `n_layer` / `num_layers`), the longest one.

    Returns:
        `tuple[str, nn.ModuleList]`: the dotted path and the list itself.

    Raises:
        `ValueError`: if `layers_attr` does not name an `nn.ModuleList`, or no candidate list is found.
    """
    if layers_attr is not None:
        try:
            layers = model.get_submodule(layers_attr)
        except AttributeError as error:
            raise ValueError(f"`cross_attention_layers_attr={layers_attr!r}` does not exist in the decoder.") from error
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"`cross_attention_layers_attr={layers_attr!r}` names a {type(layers).__name__}, not an nn.ModuleList."
            )
        return layers_attr, layers

    num_layers = next(
        (v for v in (getattr(text_config(model), k, None) for k in _NUM_LAYERS_KEYS) if isinstance(v, int)), None
    )
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        # Already-wrapped layers count as their base layer, so the list is still found after injection.
        classes = {
            type(getattr(child, "base_layer", child) if isinstance(child, CrossAttentionLayer) else child)
            for child in module
        }
        if len(classes) != 1:
            continue
        if num_layers is not None and len(module) != num_layers:
            continue
        # Ties (e.g. a per-layer list of norms next to the blocks) go to the list holding the most parameters.
        num_params = sum(p.numel() for p in module.parameters())
        candidates.append((len(module), num_params, name, module))
    if not candidates:
        expected = f" of length {num_layers}" if num_layers is not None else ""
        raise ValueError(
            f"Could not find the decoder layers of {type(model).__name__}: no nn.ModuleList{expected} of identical "
            "blocks. Pass its dotted path explicitly with `cross_attention_layers_attr` (e.g. 'model.layers')."
        )
    _, _, name, layers = max(candidates, key=lambda candidate: candidate[:2])
    return name, layers


# The keyword argument that carries the encoder side through the decoder's `forward` to the wrapped layers.
CROSS_ATTENTION_KWARG = "splice_cross_attention"


class CrossAttentionInputs(NamedTuple):
    """What the injected layers attend to during one decoder call.

    Args:
        states (`torch.Tensor` of shape `[B, S, E]`): the encoder states (unused where `cache` holds the keys/values).
        mask (`torch.Tensor` of shape `[B, S]`, *optional*): 1 for states to attend to, 0 for padding.
        cache (`Cache`, *optional*): where each layer's keys/values are kept across decoding steps (one cache layer per
            injected block); `None` projects them at every call.
    """

    states: torch.Tensor
    mask: torch.Tensor | None = None
    cache: Cache | None = None

    def key_values(self, index: int, block: GatedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[B, H, S, hd]` of the `index`-th injected block: from the cache, else projected (and
        cached when a cache is given).

        Beam search needs nothing special: `generate` expands the encoder outputs per beam once, and beams only move
        within their input, whose encoder states are identical, so cached keys/values stay valid unreordered.
        """
        if self.cache is not None and self.cache.get_seq_length(index) > 0:
            layer = self.cache.layers[index]
            return layer.keys, layer.values
        key, value = block.project_key_values(self.states)
        if self.cache is not None:
            self.cache.update(key, value, index)
        return key, value


def cross_attention_kwargs(
    encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None, cache: Cache | None = None
) -> dict[str, CrossAttentionInputs]:
    """
    The keyword argument to pass to a decoder with injected cross-attention, e.g. `decoder(ids, **kwargs)`.

    Args:
        encoder_hidden_states (`torch.Tensor` of shape `[B, S, E]`): the states to attend to.
        encoder_attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): 1 / `True` to attend, 0 for padding.
        cache (`Cache`, *optional*): a `DynamicCache` for the keys/values, kept across decoding steps.
    """
    if encoder_hidden_states.dim() != 3:
        raise ValueError(f"encoder_hidden_states must be [B, S, E], got shape {tuple(encoder_hidden_states.shape)}")
    if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
        raise ValueError(
            f"encoder_attention_mask must be [B, S] = {tuple(encoder_hidden_states.shape[:2])}, "
            f"got {tuple(encoder_attention_mask.shape)}"
        )
    return {CROSS_ATTENTION_KWARG: CrossAttentionInputs(encoder_hidden_states, encoder_attention_mask, cache)}


class GatedCrossAttention(nn.Module):
    """
    Tanh-gated cross-attention from decoder states (width `D`) to encoder states (width `E`), Flamingo style.

    `out = hidden + tanh(attn_gate) * attn(norm(hidden), encoder)`, then optionally
    `out = out + tanh(ffn_gate) * ffn(out)`. Both gates start at 0, so a freshly injected block is the exact identity.

    Args:
        hidden_size (`int`): decoder width `D`.
        encoder_hidden_size (`int`): encoder width `E`.
        num_heads (`int`): number of attention heads, kept from the decoder.
        reduce_factor (`int`, *optional*, defaults to 1):
            Inner width of queries / keys / values is `D // reduce_factor`, so `head_dim = D // reduce_factor // heads`.
        feed_forward (`bool`, *optional*, defaults to `False`): add a gated feed-forward (`D -> 4D -> D`).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): epsilon of the LayerNorms.
    """

    def __init__(
        self,
        hidden_size: int,
        encoder_hidden_size: int,
        num_heads: int,
        reduce_factor: int = 1,
        feed_forward: bool = False,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        if reduce_factor < 1 or hidden_size % reduce_factor or (hidden_size // reduce_factor) % num_heads:
            raise ValueError(
                f"cross_attention_reduce_factor={reduce_factor} must divide the decoder hidden size {hidden_size} "
                f"into a width divisible by its {num_heads} attention heads."
            )
        inner_size = hidden_size // reduce_factor
        self.num_heads = num_heads
        self.head_dim = inner_size // num_heads
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.q_proj = nn.Linear(hidden_size, inner_size)
        self.k_proj = nn.Linear(encoder_hidden_size, inner_size)
        self.v_proj = nn.Linear(encoder_hidden_size, inner_size)
        self.o_proj = nn.Linear(inner_size, hidden_size)
        self.attn_gate = nn.Parameter(torch.zeros(()))
        self.ffn = None
        self.ffn_gate = None
        if feed_forward:
            self.ffn = nn.Sequential(
                nn.LayerNorm(hidden_size, eps=layer_norm_eps),
                nn.Linear(hidden_size, 4 * hidden_size),
                nn.GELU(),
                nn.Linear(4 * hidden_size, hidden_size),
            )
            self.ffn_gate = nn.Parameter(torch.zeros(()))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, hd]

    def project_key_values(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, source_length, encoder_hidden_size)`)

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: keys and values, each `[B, heads, S, head_dim]`.
        """
        encoder_hidden_states = encoder_hidden_states.to(self.k_proj.weight.dtype)  # the encoder may run in fp32
        key = self._split_heads(self.k_proj(encoder_hidden_states))  # [B, H, S, hd]
        value = self._split_heads(self.v_proj(encoder_hidden_states))  # [B, H, S, hd]
        return key, value

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        key_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, target_length, hidden_size)`): decoder states.
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, source_length, encoder_hidden_size)`,
                *optional*): the states to attend to; not needed when `key_values` is given.
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, source_length)`, *optional*):
                1 / `True` for positions to attend to, 0 / `False` for padding.
            key_values (`tuple[torch.Tensor, torch.Tensor]`, *optional*):
                Keys and values already projected by [`~GatedCrossAttention.project_key_values`].

        Returns:
            `torch.Tensor` of shape `(batch_size, target_length, hidden_size)`.
        """
        if key_values is None:
            if encoder_hidden_states is None:
                raise ValueError("GatedCrossAttention needs encoder_hidden_states or key_values.")
            key_values = self.project_key_values(encoder_hidden_states)
        key, value = key_values  # [B, H, S, hd]
        batch_size, target_length, _ = hidden_states.shape
        dtype = self.q_proj.weight.dtype
        query = self._split_heads(self.q_proj(self.norm(hidden_states.to(dtype))))  # [B, H, T, hd]

        attn_mask = has_source = None
        if encoder_attention_mask is not None:
            keep = encoder_attention_mask.to(device=query.device, dtype=torch.bool)  # [B, S]
            has_source = keep.any(dim=-1)  # [B]
            # A row with every position masked would softmax over nothing (NaN): let it attend everywhere here and
            # zero its output below, so such a sample passes through the block unchanged.
            attn_mask = (keep | ~has_source[:, None])[:, None, None, :]  # [B, 1, 1, S]
        attn = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)  # [B, H, T, hd]
        attn = self.o_proj(attn.transpose(1, 2).reshape(batch_size, target_length, -1))  # [B, T, D]
        if has_source is not None:
            attn = attn * has_source[:, None, None].to(attn.dtype)

        # The residual stays in the decoder's dtype; with the gate at 0 this adds exact zeros (identity at init).
        hidden_states = hidden_states + (torch.tanh(self.attn_gate) * attn).to(hidden_states.dtype)
        if self.ffn is not None:
            ffn_out = self.ffn(hidden_states.to(dtype))  # [B, T, D]
            hidden_states = hidden_states + (torch.tanh(self.ffn_gate) * ffn_out).to(hidden_states.dtype)
        return hidden_states


def _replace_recorded_hidden_state(old: torch.Tensor, new: torch.Tensor) -> None:
    # transformers v5 records `output_hidden_states` with forward hooks on the decoder-layer class, which now sits
    # inside the wrapper as `base_layer`: swap the just-recorded base output for the wrapper's output.
    collected = active_output_collector.get() if active_output_collector is not None else None
    recorded = collected.get("hidden_states") if isinstance(collected, dict) else None
    if recorded and recorded[-1] is old:
        recorded[-1] = new


class CrossAttentionLayer(nn.Module):
    """
    A decoder layer followed by gated cross-attention; the original layer is kept untouched as `base_layer`.

    Attribute lookups the host model makes on its layers (`attention_type`, `layer_idx`, `self_attn`, ...) fall back
    to `base_layer`. Gradient checkpointing keeps working because `base_layer` is still the host's
    `GradientCheckpointingLayer`; the wrapper is deliberately not one, so the base layer is not checkpointed twice and
    `every_n_layers` counts the host's blocks only.

    Args:
        base_layer (`nn.Module`): the original decoder layer.
        cross_attention (`GatedCrossAttention`): the block applied to the layer's output hidden states.
        index (`int`): this block's place among the injected blocks: its layer in the keys/values cache.
    """

    def __init__(self, base_layer: nn.Module, cross_attention: GatedCrossAttention, index: int = 0):
        super().__init__()
        self.base_layer = base_layer
        self.cross_attention = cross_attention
        self.cross_attention_index = index

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Guard against recursion while `base_layer` does not exist yet (during __init__, copy or unpickling).
            if name == "base_layer" or "_modules" not in self.__dict__:
                raise
            return getattr(self.base_layer, name)

    def forward(self, *args, **kwargs):
        """Run `base_layer(*args, **kwargs)`, then cross-attention on its hidden states; return the same structure.

        The encoder side arrives as the `splice_cross_attention` keyword (see `cross_attention_kwargs`), which the
        base layer never sees.
        """
        inputs = kwargs.pop(CROSS_ATTENTION_KWARG, None)
        if inputs is None:  # run unconditioned: a decoder that drops keywords, or a call without the encoder side
            raise RuntimeError(
                f"An injected cross-attention layer ({type(self.base_layer).__name__}) ran without encoder states. "
                "Call the decoder with `**cross_attention_kwargs(encoder_hidden_states, mask)` (SpliceModel does); if "
                "you did, this decoder does not pass keyword arguments down to its layers: use conditioning='prefix'."
            )
        outputs = self.base_layer(*args, **kwargs)
        hidden_states = outputs if isinstance(outputs, torch.Tensor) else outputs[0]  # [B, T, D]
        new_hidden_states = self.cross_attention(
            hidden_states,
            encoder_attention_mask=inputs.mask,
            key_values=inputs.key_values(self.cross_attention_index, self.cross_attention),
        )
        _replace_recorded_hidden_state(hidden_states, new_hidden_states)
        if isinstance(outputs, torch.Tensor):
            return new_hidden_states
        if isinstance(outputs, list):
            return [new_hidden_states, *outputs[1:]]
        return (new_hidden_states, *outputs[1:])


def inject_cross_attention(
    decoder: PreTrainedModel,
    encoder_hidden_size: int,
    *,
    every: int = 1,
    reduce_factor: int = 1,
    feed_forward: bool = False,
    layers_attr: str | None = None,
) -> int:
    """
    Wrap every `every`-th decoder layer, in place, in a [`CrossAttentionLayer`].

    Layers `every - 1, 2 * every - 1, ...` are wrapped, so the last layer gets cross-attention whenever the number of
    layers is a multiple of `every`. New blocks are created on the device and in the dtype of the layer they follow.

    Args:
        decoder (`PreTrainedModel`): a decoder-only causal LM.
        encoder_hidden_size (`int`): width of the encoder states the blocks attend to.
        every (`int`, *optional*, defaults to 1): wrap one layer in `every`.
        reduce_factor (`int`, *optional*, defaults to 1): see [`GatedCrossAttention`].
        feed_forward (`bool`, *optional*, defaults to `False`): add a gated feed-forward to each block.
        layers_attr (`str`, *optional*): dotted path of the layer list, see [`find_decoder_layers`].

    Returns:
        `int`: the number of injected blocks.

    Raises:
        `ValueError`: if cross-attention was already injected, or the arguments do not fit the decoder.
    """
    if every < 1:
        raise ValueError(f"cross_attention_every must be >= 1, got {every}")
    _, layers = find_decoder_layers(decoder, layers_attr)
    if any(isinstance(layer, CrossAttentionLayer) for layer in layers):
        raise ValueError("Cross-attention is already injected into this decoder; injecting twice is not supported.")
    hidden_size, num_heads, eps = decoder_dimensions(decoder)

    for count, index in enumerate(range(every - 1, len(layers), every)):
        base_layer = layers[index]
        block = GatedCrossAttention(hidden_size, encoder_hidden_size, num_heads, reduce_factor, feed_forward, eps)
        reference = next((p for p in base_layer.parameters() if p.is_floating_point()), None)
        if reference is not None:
            block.to(device=reference.device, dtype=reference.dtype)
        layers[index] = CrossAttentionLayer(base_layer, block, count)
    return len(range(every - 1, len(layers), every))


def cross_attention_layers(model: nn.Module) -> Iterator[tuple[str, CrossAttentionLayer]]:
    """
    The injected layers of `model`.

    Args:
        model (`nn.Module`): a model with injected cross-attention (or one containing such a decoder).

    Yields:
        `tuple[str, CrossAttentionLayer]`: dotted name and wrapper.
    """
    for name, module in model.named_modules():
        if isinstance(module, CrossAttentionLayer):
            yield name, module


def cross_attention_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """
    The parameters added by [`inject_cross_attention`], e.g. to train them while the decoder stays frozen.

    Args:
        model (`nn.Module`): a model with injected cross-attention (or one containing such a decoder).

    Yields:
        `tuple[str, nn.Parameter]`: full dotted name (as in `model.state_dict()`) and parameter.
    """
    for name, layer in cross_attention_layers(model):
        prefix = f"{name}.cross_attention" if name else "cross_attention"
        yield from layer.cross_attention.named_parameters(prefix=prefix)


class Injected(Conditioning):
    name = "injected"

    def build(self, model: nn.Module) -> dict[str, nn.Module]:
        config = model.config
        inject_cross_attention(
            model.decoder,
            encoder_hidden_size(config.encoder),
            every=config.cross_attention_every,
            reduce_factor=config.cross_attention_reduce_factor,
            feed_forward=config.cross_attention_feed_forward,
            layers_attr=config.cross_attention_layers_attr,
        )
        return {}  # the blocks live inside the decoder's layers, PEFT style

    def initialize(self, model: nn.Module) -> None:
        # The decoder's init rule draws the blocks' projections; the gates start at 0 (identity) unless loaded.
        for _, layer in cross_attention_layers(model.decoder):
            block = layer.cross_attention
            for gate in (block.attn_gate, block.ffn_gate):
                if gate is not None and not getattr(gate, "_is_hf_initialized", False):
                    gate.zero_()

    def decode(self, model: nn.Module, states: Tensor, mask: Tensor | None, cache: Cache | None, **kwargs: Any) -> Any:
        key_value_cache = None
        if isinstance(cache, EncoderDecoderCache):  # inside `generate`: keys/values kept in its cross-attention cache
            if cache.cross_attention_cache.get_seq_length() == 0:
                # Plain layers, one per injected block: a sliding-window layer (built from the decoder's config)
                # would drop encoder keys beyond its window.
                cache.cross_attention_cache = DynamicCache()
            key_value_cache = cache.cross_attention_cache
        return model.decoder(
            **cache_kwargs(self_attention_cache(cache)),
            **cross_attention_kwargs(states, mask, key_value_cache),
            **kwargs,
        )

    def parameter_names(self, model: nn.Module) -> set[str]:
        return {name for name, _ in cross_attention_parameters(model)}
