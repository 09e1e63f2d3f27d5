"""Old import path of the injected cross-attention, kept working: it lives in `splice.conditioning.injected`."""

from .conditioning.injected import (  # noqa: F401
    CrossAttentionInputs,
    CrossAttentionLayer,
    GatedCrossAttention,
    cross_attention_kwargs,
    cross_attention_layers,
    cross_attention_parameters,
    find_decoder_layers,
    inject_cross_attention,
)
