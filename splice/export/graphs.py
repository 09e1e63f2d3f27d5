"""The PyTorch side of the export: the modules traced into `encoder_model.onnx` and the two decoder graphs.

Each graph is the splice model's own `forward` run on flat tensors (the cache is rebuilt from them inside), traced by
`torch.onnx.export`; nothing here writes an ONNX node by hand. The decoder is traced twice — the first step (no past)
and a cached step — and `merge.py` joins the two into optimum's `decoder_model_merged.onnx`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from .windows import has_windows, pad_to_patches

# Decoders whose merged graph uses optimum's decoder-only names (`past_key_values.N.key`): the cache holds only the
# self-attention keys/values and the cross-attention ones are recomputed per step, as optimum's GPT-2 config exports
# them (and transformers.js builds the empty first-step cache from those names).
SELF_ONLY_FAMILIES = ("gpt2",)

BATCH = "batch_size"


@dataclass
class Layout:
    """What the decoder graph takes and returns: the cache layout and the input/output names (optimum's)."""

    num_layers: int
    cross_cached: bool  # past/present carry `.encoder.key/value` (the cross-attention keys/values, computed once)
    encoder_mask: bool  # the decoder takes `encoder_attention_mask`
    encoder_inputs: list[str] = field(default_factory=list)
    # The decoder takes `decoder_attention_mask` `[B, past + T]` and `decoder_position_ids` `[B, T]`: left-padded
    # decoder prompts (SmallCap's retrieval prompts), whose positions count real tokens only.
    decoder_mask: bool = False

    def past_names(self, prefix: str = "past_key_values") -> list[str]:
        parts = (
            ("decoder.key", "decoder.value", "encoder.key", "encoder.value") if self.cross_cached else ("key", "value")
        )
        return [f"{prefix}.{i}.{part}" for i in range(self.num_layers) for part in parts]

    def is_encoder_entry(self, name: str) -> bool:
        return ".encoder." in name

    @property
    def decoder_inputs(self) -> list[str]:
        names = ["input_ids", "encoder_hidden_states"]
        names += ["encoder_attention_mask"] if self.encoder_mask else []
        return names + (["decoder_attention_mask", "decoder_position_ids"] if self.decoder_mask else [])

    def to_json(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "cross_cached": self.cross_cached,
            "encoder_mask": self.encoder_mask,
            "encoder_inputs": self.encoder_inputs,
            "decoder_mask": self.decoder_mask,
        }


class EncoderGraph(nn.Module):
    """`encoder_model.onnx`: the encoder's input(s) -> `last_hidden_state` `[B, S, E]` (as token states)."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.eval()  # the exporter restores the wrapper's mode recursively: a training-mode wrapper trains the model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        from ..encoders import as_token_states

        kwargs = dict(zip(self.input_names, inputs))
        if "pixel_values" in kwargs and has_windows(self.model.config.encoder):
            kwargs["pixel_values"] = pad_to_patches(kwargs["pixel_values"], self.model.config.encoder.patch_size)
        return as_token_states(self.model.encoder(**kwargs, return_dict=True).last_hidden_state)


class DecoderStep(nn.Module):
    """One decoder call of `generate`: ids, encoder states (and mask), the flat past -> logits and the flat present."""

    def __init__(self, model: nn.Module, layout: Layout, with_past: bool):
        super().__init__()
        self.model = model
        self.layout = layout
        self.with_past = with_past
        self.eval()

    def _cache(self, past: tuple[torch.Tensor, ...]) -> EncoderDecoderCache:
        if not self.with_past:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        per = 4 if self.layout.cross_cached else 2
        layers = [past[i * per : (i + 1) * per] for i in range(self.layout.num_layers)]
        self_cache = DynamicCache(ddp_cache_data=[(layer[0], layer[1]) for layer in layers])
        if not self.layout.cross_cached:
            return EncoderDecoderCache(self_cache, DynamicCache())
        cache = EncoderDecoderCache(self_cache, DynamicCache(ddp_cache_data=[(layer[2], layer[3]) for layer in layers]))
        for index in range(self.layout.num_layers):
            cache.is_updated[index] = True
        return cache

    def forward(self, input_ids: torch.Tensor, encoder_hidden_states: torch.Tensor, *rest: torch.Tensor):
        mask, past = (rest[0], rest[1:]) if self.layout.encoder_mask else (None, rest)
        prompt: dict[str, torch.Tensor] = {}
        if self.layout.decoder_mask:
            prompt = {"decoder_attention_mask": past[0], "decoder_position_ids": past[1]}
            past = past[2:]
        cache = self._cache(past)
        out = self.model(
            encoder_outputs=(encoder_hidden_states,),
            attention_mask=mask,
            decoder_input_ids=input_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
            **prompt,
        )
        flat = [out.logits]
        self_cache, cross_cache = cache.self_attention_cache, cache.cross_attention_cache
        for index in range(self.layout.num_layers):
            flat += [self_cache.layers[index].keys, self_cache.layers[index].values]
            if self.layout.cross_cached:
                flat += [cross_cache.layers[index].keys, cross_cache.layers[index].values]
        return tuple(flat)


def detect_layout(model: nn.Module, encoder_states: torch.Tensor, mask: torch.Tensor | None) -> Layout:
    """Run one first step in PyTorch to learn how many cache layers the decoder fills and whether it caches the
    cross-attention keys/values (native BART-like and injected decoders do; GPT-2 is exported without, as optimum)."""
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    ids = torch.full((encoder_states.shape[0], 1), model.config.decoder_start_token_id or 0, dtype=torch.long)
    with torch.no_grad():
        model(encoder_outputs=(encoder_states,), attention_mask=mask, decoder_input_ids=ids, past_key_values=cache)
    num_layers = len(cache.self_attention_cache.layers)
    cross = cache.cross_attention_cache
    has_cross = len(cross.layers) == num_layers and all(
        getattr(layer, "keys", None) is not None and layer.keys.numel() > 0 for layer in cross.layers
    )
    self_only = model.config.decoder.model_type in SELF_ONLY_FAMILIES and model.config.conditioning == "native"
    return Layout(num_layers=num_layers, cross_cached=has_cross and not self_only, encoder_mask=mask is not None)


def _axes(names: list[str], layout: Layout, with_past: bool) -> dict[str, dict[int, str]]:
    """optimum's symbolic dimension names (transformers.js gives `batch_size` the batch, other symbols 0)."""
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        if name == "decoder_attention_mask":
            axes[name] = {0: BATCH, 1: "past_decoder_sequence_length + 1" if with_past else "decoder_sequence_length"}
        elif name == "decoder_position_ids":
            axes[name] = {0: BATCH, 1: "decoder_sequence_length"}
        elif name in ("input_ids", "attention_mask", "encoder_attention_mask"):
            seq = "decoder_sequence_length" if name == "input_ids" else "encoder_sequence_length"
            axes[name] = {0: BATCH, 1: seq}
        elif name in ("pixel_values", "input_values", "input_features"):
            axes[name] = {0: BATCH} | ({1: "sequence_length"} if name == "input_values" else {})
            if name == "pixel_values":
                axes[name] |= {2: "height", 3: "width"}
        elif name in ("encoder_hidden_states", "last_hidden_state"):
            axes[name] = {0: BATCH, 1: "encoder_sequence_length"}
        elif name == "logits":
            axes[name] = {0: BATCH, 1: "decoder_sequence_length"}
        elif name.startswith(("past_key_values.", "present.")):
            past = name.startswith("past_key_values.")
            if layout.is_encoder_entry(name):
                length = "encoder_sequence_length_out"
            elif past:
                length = "past_decoder_sequence_length"
            else:
                length = "past_decoder_sequence_length + 1" if with_past else "decoder_sequence_length"
            axes[name] = {0: BATCH, 2: length}
    return axes


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    input_names: list[str],
    output_names: list[str],
    layout: Layout,
    with_past: bool,
    opset: int,
) -> None:
    """Trace `module` on `args` into `path` with every batch and length dimension dynamic."""
    axes = _axes(input_names + output_names, layout, with_past)
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # splice's oneDNN LM head (splice/onednn.py) calls an op ONNX lacks
    # nn.TransformerEncoderLayer's inference fast path (the OCR line encoder's layers) is one fused op that ONNX
    # lacks; the regular path is the same computation in exportable ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        _trace(module, args, path, input_names, output_names, axes, opset)
    finally:
        torch.backends.mkldnn.enabled = onednn
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace(module, args, path, input_names, output_names, axes, opset) -> None:  # noqa: ANN001
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on Python control flow over shapes (checked by parity)
        torch.onnx.export(
            module,
            args,
            path,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={name: spec for name, spec in axes.items() if name in input_names + output_names},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
