"""How the decoder reads the encoder: one strategy object per `config.conditioning`, and the one "auto" rule.

- `"native"` ([`Native`]): the decoder's own cross-attention (GPT-2, BERT, RoBERTa, Electra, TrOCR, BART);
- `"injected"` ([`Injected`]): splice's gated cross-attention wrapped around the layers of any decoder-only LM;
- `"prefix"` ([`Prefix`]): projected encoder states prepended to the decoder's input embeddings.

Each strategy builds what it adds to a model (`build`) and initialises it (`initialize`), adapts the encoder states
(`adapt`), runs the decoder (`decode`), names the decoder-side parameters it trains (`parameter_names`), and says how
many positions it places before the text (`positions_before_text`). A new mode is a `Conditioning` subclass passed to
`register_conditioning`; the model needs no change.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn
from transformers import PreTrainedConfig

from .base import (
    CROSS_ATTENTION_NAMES,
    Conditioning,
    enable_cross_attention,
    has_native_cross_attention,
    is_cross_attention_name,
)
from .injected import Injected
from .native import Native
from .prefix import Prefix

STRATEGIES: dict[str, Conditioning] = {strategy.name: strategy for strategy in (Native(), Injected(), Prefix())}
# The built-in values (the command line's choices); `conditionings()` adds modes registered since.
CONDITIONINGS = (*STRATEGIES, "auto")


def conditionings() -> tuple[str, ...]:
    """Every accepted `conditioning` value: the registered modes and `"auto"`."""
    return (*STRATEGIES, "auto")


def register_conditioning(mode: Conditioning) -> None:
    """Make `conditioning=mode.name` buildable (a model, its config and checkpoints then accept the name)."""
    if mode.name == "auto":
        raise ValueError("'auto' is the rule that picks a mode; a mode cannot be named 'auto'.")
    STRATEGIES[mode.name] = mode


__all__ = [
    "CONDITIONINGS",
    "CROSS_ATTENTION_NAMES",
    "Conditioning",
    "STRATEGIES",
    "conditioning_parameter_names",
    "enable_cross_attention",
    "conditionings",
    "has_native_cross_attention",
    "is_cross_attention_name",
    "register_conditioning",
    "resolve_conditioning",
    "strategy",
    "trains_with_conditioning",
]


def resolve_conditioning(
    conditioning: str, decoder: nn.Module | PreTrainedConfig | dict, native_families: Collection[str] | None = None
) -> str:
    """The conditioning to build: `"auto"` becomes `"native"` where the decoder has cross-attention, else `"injected"`.

    Args:
        conditioning: `"auto"`, `"native"`, `"injected"`, `"prefix"` or a registered mode.
        decoder: the decoder as built (an instance decides by its modules) or its config (by its family).
        native_families: only these `model_type`s count as native (SmallCap: GPT-2's reduced cross-attention).
    """
    if conditioning not in conditionings():
        raise ValueError(
            f"conditioning={conditioning!r} is not one of {conditionings()}: 'native' uses the decoder's own "
            "cross-attention, 'injected' adds splice's, 'prefix' prepends the encoder states to the decoder's "
            "input, 'auto' picks native where the decoder has it, else injected."
        )
    if conditioning != "auto":
        return conditioning
    if native_families is not None:
        config = decoder.config if isinstance(decoder, nn.Module) else decoder
        model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
        return "native" if model_type in native_families else "injected"
    return "native" if has_native_cross_attention(decoder) else "injected"


def strategy(conditioning: str) -> Conditioning:
    """The strategy object of a resolved `conditioning` (configs resolve `"auto"` when they are built)."""
    if conditioning not in STRATEGIES:
        raise ValueError(f"conditioning={conditioning!r} is not resolved; expected one of {tuple(STRATEGIES)}.")
    return STRATEGIES[conditioning]


def conditioning_parameter_names(model: nn.Module) -> set[str]:
    """
    Names of the parameters that join the encoder to the decoder (what SmallCap and `--freeze encoder+decoder` train).

    Args:
        model (`SpliceModel`): the composite model.

    Returns:
        `set[str]`: dotted names as in `model.named_parameters()`: the strategy's decoder-side parameters (native
        cross-attention, injected blocks) and every parameter outside the encoder and the decoder (the modules the
        strategy built, e.g. `enc_to_dec_proj` or the prefix projector, and modules a subclass adds), less those the
        model keeps frozen (`SpliceModel.keeps_frozen`: SmallCap's cross-attention layer norms).
    """
    names = strategy(model.config.conditioning).parameter_names(model)
    names.update(name for name, _ in model.named_parameters() if name.split(".", 1)[0] not in ("encoder", "decoder"))
    return {name for name in names if not model.keeps_frozen(name)}


def trains_with_conditioning(model: nn.Module) -> set[str]:
    """The parameters that train when only what joins encoder and decoder trains (SmallCap, `--freeze
    encoder+decoder`): the conditioning parameters and LoRA's low-rank weights, if LoRA was applied (PEFT names them
    `lora_*`). The one rule for both."""
    lora = {name for name, _ in model.named_parameters() if any(p.startswith("lora_") for p in name.split("."))}
    return conditioning_parameter_names(model) | lora
