"""The composites' `forward` signatures, as data: each class lists its parameters in its transformers counterpart's
positional order, and `composite_forward` makes the method (a real `inspect.signature`, so transformers' own
introspection — `"attention_mask" in signature`, model-kwargs validation — sees exactly those names)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

_TENSOR = torch.Tensor | None
_TYPES: dict[str, Any] = {
    "encoder_outputs": tuple | BaseModelOutput | None,
    "past_key_values": Cache | None,
    "cache": Cache | None,
    "use_cache": bool | None,
    "output_attentions": bool | None,
    "output_hidden_states": bool | None,
    "return_dict": bool | None,
}
# After the encoder's inputs, in transformers' order (`inputs_embeds` / speech's extra inputs are placed per class).
DECODER_PARAMETERS = (
    "decoder_input_ids",
    "decoder_attention_mask",
    "encoder_outputs",
    "past_key_values",
    "decoder_inputs_embeds",
    "labels",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
)

FORWARD_DOC = """Encode the input (unless `encoder_outputs` is given), then decode.

Args:
    pixel_values / input_ids / input_values / input_features: the encoder's input, whichever it takes.
    attention_mask (`torch.Tensor` of shape `[B, S]`, *optional*): the encoder's padding mask; also passed to
        the decoder's cross-attention (downsampled for speech encoders).
    inputs_embeds: the encoder's input embeddings, instead of `input_ids`.
    decoder_input_ids (`torch.LongTensor` of shape `[B, T]`, *optional*): built from `labels` when omitted
        (shifted right, -100 replaced by `pad_token_id`).
    decoder_attention_mask (`torch.Tensor` of shape `[B, T]`, *optional*): when built from labels, positions
        whose label is -100 are masked.
    encoder_outputs (`tuple` or `BaseModelOutput`, *optional*): precomputed encoder outputs.
    past_key_values / cache (`Cache`, *optional*): the decoder's cache (`cache` is transformers 5.24's name).
    decoder_inputs_embeds: the decoder's input embeddings, instead of `decoder_input_ids`.
    labels (`torch.LongTensor` of shape `[B, T]`, *optional*): target ids; -100 is ignored by the loss.
    kwargs: unprefixed keys go to the encoder, `decoder_`-prefixed keys to the decoder.
"""


def composite_forward(parameters: tuple[str, ...], doc: str) -> Callable[..., Seq2SeqLMOutput | tuple]:
    """A `forward(self, <parameters>, **kwargs)` that hands every argument, by name, to `self._splice_forward`."""

    def forward(self, *args: Any, **kwargs: Any) -> Seq2SeqLMOutput | tuple:
        if len(args) > len(parameters):
            raise TypeError(f"forward() takes {len(parameters)} positional arguments but {len(args)} were given")
        for name, value in zip(parameters, args):
            if name in kwargs:
                raise TypeError(f"forward() got multiple values for argument {name!r}")
            kwargs[name] = value
        return self._splice_forward(**kwargs)

    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    named = [
        inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=_TYPES.get(name, _TENSOR)
        )
        for name in parameters
    ]
    rest = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
    forward.__signature__ = inspect.Signature([self_parameter, *named, rest], return_annotation=Seq2SeqLMOutput | tuple)
    forward.__doc__ = doc
    return forward
