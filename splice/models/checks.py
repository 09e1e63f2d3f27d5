"""Input checks of the model: bad input is a `ValueError` naming the argument, the value and the fix, before it can
become a deep `IndexError` or a silently wrong output. Eager calls only: a compiled graph skips them (they read
values back to the host)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..conditioning.base import position_limit


def check_ids(name: str, ids: torch.Tensor, vocab_size: int, part: str = "decoder") -> None:
    """Token ids inside `[0, vocab_size)`; in `labels`, -100 marks ignored positions."""
    if torch.compiler.is_compiling():
        return
    valid = ids[ids != -100] if name == "labels" else ids
    if valid.numel() and (valid.min() < 0 or valid.max() >= vocab_size):
        bad = valid[(valid < 0) | (valid >= vocab_size)][0].item()
        fix = (
            "If the tokenizer has more tokens than the decoder, call `model.resize_token_embeddings(len(tokenizer))`."
            if part == "decoder"
            else "Tokenize the source with the encoder's own tokenizer."
        )
        raise ValueError(
            f"{name} contains id {bad}, outside the {part} vocabulary [0, {vocab_size})"
            + (" (only -100 may mark ignored positions)" if name == "labels" else "")
            + f". {fix}"
        )


def check_encoder_inputs(encoder: nn.Module, inputs: dict[str, torch.Tensor], values: bool = False) -> None:
    """The encoder's `input_ids` inside its vocabulary; `pixel_values` floats. With `values` (once per `generate`,
    not on every training step: it reads the tensor back), floats beyond ±32 warn: 0-255 pixels, not normalised."""
    if torch.compiler.is_compiling():
        return
    vocab_size = getattr(encoder.config, "vocab_size", None)
    if "input_ids" in inputs and isinstance(vocab_size, int):
        check_ids("input_ids", inputs["input_ids"], vocab_size, part="encoder")
    pixels = inputs.get("pixel_values")
    if pixels is None:
        return
    if not pixels.is_floating_point():
        raise ValueError(
            f"pixel_values has dtype {pixels.dtype}: raw pixels. The encoder expects normalised floats; pass the "
            "images through the image processor (`processor(images=images)['pixel_values']`)."
        )
    peak = pixels.abs().max().item() if values and pixels.numel() else 0.0
    if peak > 32:
        warnings.warn(
            f"pixel_values reach {peak:.0f}: they look like 0-255 pixels, not normalised ones. "
            "Pass the images through the image processor.",
            stacklevel=4,
        )


def check_generate_arguments(model: nn.Module, inputs: Any, generation_config: Any, kwargs: dict[str, Any]) -> None:
    """`num_beams` ≥ 1, `max_new_tokens` ≥ 1, and the length asked for within the decoder's positions."""
    config = generation_config if generation_config is not None else model.generation_config
    # `generate` runs the encoder itself (not through `forward`): its inputs are checked here.
    encoder_inputs = {k: kwargs[k] for k in ("pixel_values", "input_ids") if isinstance(kwargs.get(k), torch.Tensor)}
    if isinstance(inputs, torch.Tensor) and model.main_input_name in ("pixel_values", "input_ids"):
        encoder_inputs[model.main_input_name] = inputs
    check_encoder_inputs(model.encoder, encoder_inputs, values=True)

    def setting(name: str) -> Any:
        return kwargs[name] if kwargs.get(name) is not None else getattr(config, name, None)

    for name in ("num_beams", "max_new_tokens", "num_return_sequences"):
        value = setting(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"generate(): {name}={value!r}; it must be an integer >= 1.")
    limit = position_limit(model.config.decoder)
    if limit is None:
        return
    prompt = kwargs.get("decoder_input_ids")
    start = prompt.shape[1] if prompt is not None else 1
    # Positions a mode places before the text; a count that depends on the encoder's output (an unreduced prefix) is
    # checked at the first step instead (`check_generation_length`).
    start += model.conditioning.positions_before_text(model, None) or 0
    max_new = setting("max_new_tokens")
    total = start + max_new if max_new is not None else setting("max_length")
    if total is not None and total > limit:
        raise ValueError(
            f"generate(): {start} prompt position(s) + max_new_tokens={max_new} = {total} positions, but the decoder "
            f"{type(model.decoder).__name__} takes {limit}. Lower max_new_tokens to at "
            f"most {limit - start}."
        )


def check_generation_length(model: nn.Module, positions: int) -> None:
    """At a decoding step: the positions the decoder reads (before the text, prompt and tokens so far) fit its
    position limit, so a step past it is this error, not an `IndexError` deep in the position embeddings."""
    limit = position_limit(model.config.decoder)
    if limit is not None and positions > limit:
        raise ValueError(
            f"generate(): this step needs {positions} decoder positions (what the {model.config.conditioning!r} "
            f"conditioning places before the text, the prompt and the tokens generated so far), but the decoder "
            f"{type(model.decoder).__name__} takes {limit}. Lower max_new_tokens by at least {positions - limit}, or "
            "shorten what comes before the text (e.g. `prefix_length` for the prefix mode)."
        )
