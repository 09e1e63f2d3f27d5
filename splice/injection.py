"""Gated cross-attention injected into any decoder-only causal LM from `transformers`, PEFT style.

No modeling file is forked: the decoder's list of transformer blocks is located, and selected blocks are replaced by
a [`CrossAttentionLayer`] that keeps the original block untouched as `base_layer` and runs a [`GatedCrossAttention`] on
its output. The encoder states are not threaded through the host model's `forward` (whose signature we do not control);
instead they live in a [`CrossAttentionContext`] shared by all injected blocks and set by the caller before each
forward / `generate` call.

State-dict keys follow PEFT: `model.layers.1.base_layer.self_attn.q_proj.weight` (original weights, one extra path
component) and `model.layers.1.cross_attention.q_proj.weight` (new weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ._compat import active_output_collector

_NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# OPT has `word_embed_proj_dim` for its embeddings, but its layers run at `hidden_size`, so `hidden_size` comes first.
_HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim")
_NUM_HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads")


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        return None
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _first_config_value(config, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


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

    num_layers = _first_config_value(_text_config(model), _NUM_LAYERS_KEYS)
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


class CrossAttentionContext:
    """
    The encoder states that the injected blocks attend to during the current forward / `generate` call.

    Each block's projected keys / values are cached per encoder-states tensor *object* (compared with `is`, a reference
    is kept so the id cannot be recycled): `generate` passes the same tensor at every decoding step, so each block
    projects the encoder states once per `generate` call rather than once per token.

    Beam search and `num_return_sequences` need no special handling: `generate` expands the encoder outputs with
    `repeat_interleave` once, before decoding, so the context receives the expanded `[B * beams, S, E]` tensor once.
    Beam reordering then permutes rows among the beams of the same input, whose encoder states are identical, so the
    cached `[B * beams, heads, S, head_dim]` keys / values stay valid without being reordered.
    """

    def __init__(self):
        self.encoder_hidden_states: torch.Tensor | None = None
        self.encoder_attention_mask: torch.Tensor | None = None
        self._kv_cache: dict[nn.Module, tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def set(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None) -> None:
        """
        Set the encoder states for the next forward / `generate` call.

        Args:
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, source_length, encoder_hidden_size)`):
                The states to attend to.
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, source_length)`, *optional*):
                1 (or `True`) for positions to attend to, 0 for padding. `None` attends to every position.
        """
        if encoder_hidden_states.dim() != 3:
            raise ValueError(f"encoder_hidden_states must be [B, S, E], got shape {tuple(encoder_hidden_states.shape)}")
        if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask must be [B, S] = {tuple(encoder_hidden_states.shape[:2])}, "
                f"got {tuple(encoder_attention_mask.shape)}"
            )
        if encoder_hidden_states is not self.encoder_hidden_states:
            self._kv_cache.clear()
        self.encoder_hidden_states = encoder_hidden_states
        self.encoder_attention_mask = encoder_attention_mask

    def clear(self) -> None:
        """Drop the encoder states and every cached key / value."""
        self.encoder_hidden_states = None
        self.encoder_attention_mask = None
        self._kv_cache.clear()

    @contextlib.contextmanager
    def bind(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> Iterator[CrossAttentionContext]:
        """`set` for the duration of a `with` block, then `clear`."""
        self.set(encoder_hidden_states, encoder_attention_mask)
        try:
            yield self
        finally:
            self.clear()

    def key_values(self, block: GatedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The keys and values of `block` for the current encoder states, projected at most once.

        Args:
            block (`GatedCrossAttention`): the block whose `k_proj` / `v_proj` to use.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: keys and values, each `[B, heads, S, head_dim]`.
        """
        if self.encoder_hidden_states is None:
            raise RuntimeError(
                "The injected cross-attention has no encoder states: call `CrossAttentionContext.set("
                "encoder_hidden_states, encoder_attention_mask)` before running the decoder."
            )
        # A cache entry made with older (or moved) weights is never reused, see `projection_versions`.
        versions = block.projection_versions()
        entry = self._kv_cache.get(block)
        if entry is not None and entry[0] == versions:
            return entry[1], entry[2]
        key, value = block.project_key_values(self.encoder_hidden_states)
        # Tensors that carry an autograd graph are not cached: a second backward through them would fail, and in
        # training each block projects only once per forward anyway. Decoding runs under no_grad and is cached.
        if not key.requires_grad:
            self._kv_cache[block] = (versions, key, value)
        return key, value


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

    @torch.no_grad()
    def reset_gates(self) -> None:
        """Zero the gates, making the block the identity again (e.g. after a meta-device `from_pretrained`)."""
        self.attn_gate.zero_()
        if self.ffn_gate is not None:
            self.ffn_gate.zero_()

    def projection_versions(self) -> tuple[tuple[int, int], ...]:
        """
        Storage address and version counter of each key / value projection parameter: cached keys / values are then
        invalidated by in-place updates (optimizer step, `fill_`, `load_state_dict`) and by `.to(device / dtype)`.
        """
        return tuple((p.data_ptr(), p._version) for p in (*self.k_proj.parameters(), *self.v_proj.parameters()))

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
        context (`CrossAttentionContext`): where the encoder states are read from.
    """

    def __init__(self, base_layer: nn.Module, cross_attention: GatedCrossAttention, context: CrossAttentionContext):
        super().__init__()
        self.base_layer = base_layer
        self.cross_attention = cross_attention
        self.cross_attention_context = context  # a plain object: not a submodule, not in the state dict

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Guard against recursion while `base_layer` does not exist yet (during __init__, copy or unpickling).
            if name == "base_layer" or "_modules" not in self.__dict__:
                raise
            return getattr(self.base_layer, name)

    def forward(self, *args, **kwargs):
        """Run `base_layer(*args, **kwargs)`, then cross-attention on its hidden states; return the same structure."""
        outputs = self.base_layer(*args, **kwargs)
        hidden_states = outputs if isinstance(outputs, torch.Tensor) else outputs[0]  # [B, T, D]
        context = self.cross_attention_context
        new_hidden_states = self.cross_attention(
            hidden_states,
            encoder_attention_mask=context.encoder_attention_mask,
            key_values=context.key_values(self.cross_attention),
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
    context: CrossAttentionContext | None = None,
) -> CrossAttentionContext:
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
        context (`CrossAttentionContext`, *optional*): context to share; a new one is created when not given.

    Returns:
        `CrossAttentionContext`: the context the injected blocks read their encoder states from.

    Raises:
        `ValueError`: if cross-attention was already injected, or the arguments do not fit the decoder.
    """
    if every < 1:
        raise ValueError(f"cross_attention_every must be >= 1, got {every}")
    _, layers = find_decoder_layers(decoder, layers_attr)
    if any(isinstance(layer, CrossAttentionLayer) for layer in layers):
        raise ValueError("Cross-attention is already injected into this decoder; injecting twice is not supported.")
    config = _text_config(decoder)
    hidden_size = _first_config_value(config, _HIDDEN_SIZE_KEYS)
    num_heads = _first_config_value(config, _NUM_HEADS_KEYS)
    if hidden_size is None or num_heads is None:
        raise ValueError(f"Cannot read the hidden size and number of attention heads from {type(config).__name__}.")
    eps = getattr(config, "layer_norm_eps", None) or getattr(config, "layer_norm_epsilon", None) or 1e-5

    context = context if context is not None else CrossAttentionContext()
    for index in range(every - 1, len(layers), every):
        base_layer = layers[index]
        block = GatedCrossAttention(hidden_size, encoder_hidden_size, num_heads, reduce_factor, feed_forward, eps)
        reference = next((p for p in base_layer.parameters() if p.is_floating_point()), None)
        if reference is not None:
            block.to(device=reference.device, dtype=reference.dtype)
        layers[index] = CrossAttentionLayer(base_layer, block, context)
    return context


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


def get_cross_attention_context(model: nn.Module) -> CrossAttentionContext | None:
    """
    The context of the injected layers of `model` (e.g. of a `copy.deepcopy`, which gets its own context).

    Args:
        model (`nn.Module`): a model with injected cross-attention.

    Returns:
        `CrossAttentionContext` or `None` if nothing was injected.
    """
    return next((layer.cross_attention_context for _, layer in cross_attention_layers(model)), None)


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


def injected_parameter_names(model: nn.Module) -> list[str]:
    """
    Names of the parameters added by [`inject_cross_attention`].

    Args:
        model (`nn.Module`): a model with injected cross-attention.

    Returns:
        `list[str]`: dotted names as in `model.state_dict()`.
    """
    return [name for name, _ in cross_attention_parameters(model)]
