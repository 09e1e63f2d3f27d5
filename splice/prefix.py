"""Prefix conditioning: encoder states become tokens prepended to the decoder's input embeddings (LLaVA, ClipCap).

encoder states `[B, S, E]` → projector (`"linear"` or `"mlp"`) → `[B, S, D]` → optional reduction to
`prefix_length` tokens (`"pool"`: adaptive average pooling; `"resampler"`: learned queries cross-attending to the
states) → `[B, P, D]`, with a mask `[B, P]` (padding in the encoder input stays masked when no reduction is applied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTORS = ("linear", "mlp")
REDUCERS = ("pool", "resampler")


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
                num_heads = 1  # any width works with one head
            self.queries = nn.Parameter(torch.randn(prefix_length, embed_dim) * embed_dim**-0.5)
            self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
            self.norm = nn.LayerNorm(embed_dim)

    def prefix_mask(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prefix's attention mask `[B, P]` (long), without computing the prefix (decoding steps need only this)."""
        batch, length = encoder_hidden_states.shape[:2]
        if self.reducer is None and encoder_attention_mask is not None:
            # Padding moves to the front (see `forward`): real prefix tokens sit right before the text.
            return torch.sort(encoder_attention_mask.long(), dim=1, stable=True).values
        length = self.prefix_length if self.reducer is not None else length
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
        if self.reducer == "pool" and (mask is None or bool(mask.all())):
            prefix = F.adaptive_avg_pool1d(states.transpose(1, 2), self.prefix_length).transpose(1, 2)  # [B, P, D]
        elif self.reducer == "pool":
            # Pool each sample over its own states only, so padding never changes a sample's prefix.
            prefix = torch.stack(
                [
                    F.adaptive_avg_pool1d(states[b, mask[b].bool()].T.unsqueeze(0), self.prefix_length)[0].T
                    for b in range(batch)
                ]
            )
        else:
            queries = self.queries.unsqueeze(0).expand(batch, -1, -1)  # [B, P, D]
            padding = None if mask is None else mask == 0
            prefix, _ = self.attention(queries, states, states, key_padding_mask=padding)
            prefix = self.norm(prefix + queries)
        return prefix
