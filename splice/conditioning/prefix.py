"""Prefix conditioning: encoder states become tokens prepended to the decoder's input embeddings (LLaVA, ClipCap).

encoder states `[B, S, E]` → projector (`"linear"` or `"mlp"`) → `[B, S, D]` → optional reduction to
`prefix_length` tokens (`"pool"`: adaptive average pooling; `"resampler"`: learned queries cross-attending to the
states) → `[B, P, D]`, with a mask `[B, P]` (padding in the encoder input stays masked when no reduction is applied).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache

from .._compat import cache_kwargs
from ..encoders import encoder_hidden_size
from .base import Conditioning, decoder_dimensions, self_attention_cache

PROJECTORS = ("linear", "mlp")
REDUCERS = ("pool", "resampler")


def pooling_weights(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Adaptive average pooling of each sample's real states (mask 1) into `length` bins, as a matrix `[B, P, S]`.

    Bin i of a sample with n real states averages its real states ranked floor(i n / P) to ceil((i + 1) n / P) - 1
    (`F.adaptive_avg_pool1d`'s bins over that sample alone), so padding never changes a sample's prefix; one batched
    matmul, no per-sample loop and no host sync.
    """
    real = mask.long()  # [B, S]
    rank = real.cumsum(-1) - 1  # [B, S]: the position among real states
    count = real.sum(-1, keepdim=True)  # [B, 1]
    bins = torch.arange(length, device=mask.device)[None, :]  # [1, P]
    start = (bins * count) // length  # [B, P]
    end = ((bins + 1) * count + length - 1) // length  # [B, P]
    inside = (rank[:, None, :] >= start[..., None]) & (rank[:, None, :] < end[..., None]) & real.bool()[:, None, :]
    return inside.float() / (end - start).clamp(min=1)[..., None].float()  # [B, P, S]


class PrefixProjector(nn.Module):
    r"""
    Turns encoder states into prefix embeddings in the decoder's input-embedding space.

    Args:
        encoder_hidden_size (`int`): width E of the encoder states.
        embed_dim (`int`): width D of the decoder's input embeddings.
        projector (`str`): `"linear"` (one layer) or `"mlp"` (two layers with GELU).
        prefix_length (`int`, *optional*): reduce the S states to this many tokens; `None` keeps all S.
        reducer (`str`): `"pool"` or `"resampler"`, used when `prefix_length` is set.
        num_heads (`int`): heads of the resampler's attention.
    """

    def __init__(
        self,
        encoder_hidden_size: int,
        embed_dim: int,
        projector: str = "mlp",
        prefix_length: int | None = None,
        reducer: str = "pool",
        num_heads: int = 4,
    ):
        super().__init__()
        if projector not in PROJECTORS:
            raise ValueError(f"prefix_projector={projector!r} is not one of {PROJECTORS}.")
        if reducer not in REDUCERS:
            raise ValueError(f"prefix_reducer={reducer!r} is not one of {REDUCERS}.")
        if prefix_length is not None and prefix_length < 1:
            raise ValueError(f"prefix_length={prefix_length} must be a positive number of tokens, or None.")
        if projector == "linear":
            self.proj = nn.Linear(encoder_hidden_size, embed_dim)
        else:
            self.proj = nn.Sequential(
                nn.Linear(encoder_hidden_size, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
            )
        self.prefix_length = prefix_length
        self.reducer = reducer if prefix_length is not None else None
        if self.reducer == "resampler":
            if embed_dim % num_heads:
                num_heads = 1  # any width works with one head (the decoder's count may not divide the embeddings)
            self.queries = nn.Parameter(torch.randn(prefix_length, embed_dim) * embed_dim**-0.5)
            self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
            self.norm = nn.LayerNorm(embed_dim)

    def output_length(self, num_states: int | None) -> int | None:
        """The number of prefix tokens P for `num_states` encoder states (`None` if that is unknown and needed)."""
        return self.prefix_length if self.reducer is not None else num_states

    def prefix_mask(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prefix's attention mask `[B, P]` (long), without computing the prefix (decoding steps need only this)."""
        batch, num_states = encoder_hidden_states.shape[:2]
        if self.reducer is None and encoder_attention_mask is not None:
            # Padding moves to the front (see `forward`): real prefix tokens sit right before the text.
            return torch.sort(encoder_attention_mask.long(), dim=1, stable=True).values
        length = self.output_length(num_states)
        return torch.ones(batch, length, dtype=torch.long, device=encoder_hidden_states.device)

    def forward(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""
        Args:
            encoder_hidden_states (`torch.Tensor` of shape `[B, S, E]`).
            encoder_attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): 1 for real states, 0 for padding.

        Returns:
            the prefix `[B, P, D]`; its mask is `prefix_mask(...)`.
        """
        states = self.proj(encoder_hidden_states)  # [B, S, D]
        batch = states.shape[0]
        if self.reducer is None:
            if encoder_attention_mask is None:
                return states
            # Left-align the padding, so the real prefix tokens are contiguous with the text: a sliding-window
            # decoder (Mistral, Gemma) then sees the same tokens in its window as for the unpadded sample.
            order = torch.argsort(encoder_attention_mask.long(), dim=1, stable=True)  # [B, S]
            return states.gather(1, order.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
        mask = encoder_attention_mask
        if self.reducer == "pool":
            if mask is None:
                mask = states.new_ones(states.shape[:2])
            prefix = pooling_weights(mask, self.prefix_length).to(states.dtype) @ states  # [B, P, S] @ [B, S, D]
        else:
            queries = self.queries.unsqueeze(0).expand(batch, -1, -1)  # [B, P, D]
            padding = None if mask is None else mask == 0
            prefix, _ = self.attention(queries, states, states, key_padding_mask=padding)
            prefix = self.norm(prefix + queries)
        return prefix


# The projector's name in the composite (a checkpoint key).
PROJECTOR = "prefix_projector"


class Prefix(Conditioning):
    name = "prefix"
    sets_position_ids = True  # positions count real tokens of the prefix and the text

    def build(self, model: nn.Module) -> dict[str, nn.Module]:
        config = model.config
        projector = PrefixProjector(
            encoder_hidden_size(config.encoder),
            model.decoder.get_input_embeddings().embedding_dim,
            projector=config.prefix_projector,
            prefix_length=config.prefix_length,
            reducer=config.prefix_reducer,
            num_heads=decoder_dimensions(model.decoder)[1],
        )
        return {PROJECTOR: projector}

    def initialize(self, model: nn.Module) -> None:
        projector = getattr(model, PROJECTOR)
        if projector.reducer == "resampler" and not getattr(projector.queries, "_is_hf_initialized", False):
            projector.queries.normal_(0, projector.queries.shape[-1] ** -0.5)

    def positions_before_text(self, model: nn.Module, num_states: int | None) -> int | None:
        return getattr(model, PROJECTOR).output_length(num_states)

    def decode(
        self,
        model: nn.Module,
        states: Tensor,
        mask: Tensor | None,
        cache: Cache | None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        cache = self_attention_cache(cache)
        past_length = cache.get_seq_length() if cache is not None else 0
        if inputs_embeds is None:
            inputs_embeds = model.decoder.get_input_embeddings()(input_ids)  # [B, T, D]
        projector = getattr(model, PROJECTOR)
        prefix_mask = projector.prefix_mask(states, mask)  # [B, P]
        prefix_length = prefix_mask.shape[1]
        if past_length == 0:  # the prefix enters once; later steps find it in the KV cache
            prefix = projector(states, mask)  # [B, P, D]
            inputs_embeds = torch.cat([prefix.to(inputs_embeds.dtype), inputs_embeds], dim=1)  # [B, P+T, D]
        batch, new_length = inputs_embeds.shape[:2]
        text_length = past_length + new_length - prefix_length
        if attention_mask is None:
            attention_mask = prefix_mask.new_ones(batch, text_length)
        full_mask = torch.cat([prefix_mask, attention_mask[:, -text_length:].to(prefix_mask.dtype)], dim=1)
        # Positions count real tokens only, so a padded prefix or padded text shifts nothing.
        position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -new_length:]  # [B, T_new]
        kwargs.pop("position_ids", None)
        outputs = model.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            **kwargs,
        )
        if past_length == 0:
            outputs.logits = outputs.logits[:, prefix_length:]  # logits for the text positions only
        return outputs
