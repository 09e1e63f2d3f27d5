"""LoRA on the decoder (with PEFT): low-rank updates to the frozen decoder's own linear layers, trained with the
conditioning parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..conditioning import conditioning_parameter_names, is_cross_attention_name
from ..conditioning.injected import find_decoder_layers
from .freezing import apply_freeze_policy

if TYPE_CHECKING:
    from ..models import SpliceModel


def _default_lora_targets(model: SpliceModel, excluded: set[str]) -> list[str]:
    """Every linear layer (`nn.Linear`, GPT-2's `Conv1D`) inside the decoder's transformer blocks, except `excluded`.

    Restricting to the blocks leaves out the LM head and, e.g., BERT's prediction-head transform.
    """
    try:
        layers_path, _ = find_decoder_layers(model.decoder, model.config.cross_attention_layers_attr)
    except ValueError as error:
        raise ValueError(f"{error} Or pass `target_modules` to `apply_lora`.") from error
    return [
        name
        for name, module in model.decoder.named_modules()
        if name.startswith(layers_path + ".") and isinstance(module, nn.Linear | Conv1D) and name not in excluded
    ]


def _resolve_lora_targets(model: SpliceModel, target_modules: list[str] | None) -> list[str]:
    """Full decoder module names to adapt; cross-attention modules are never adapted (they train in full, or are
    unused: a decoder built with `add_cross_attention=True` but conditioned otherwise)."""
    conditioning = conditioning_parameter_names(model)
    excluded = {
        name
        for name, module in model.decoder.named_modules()
        if is_cross_attention_name(name)
        or any(f"decoder.{name}.{param}" in conditioning for param, _ in module.named_parameters())
    }
    if target_modules is None:
        targets = _default_lora_targets(model, excluded)
    else:
        # PEFT's rule: a name matches a target exactly or as its last components.
        targets = [
            name
            for name, _ in model.decoder.named_modules()
            if name not in excluded and any(name == t or name.endswith("." + t) for t in target_modules)
        ]
    if not targets:
        raise ValueError(
            f"No decoder module matches target_modules={target_modules} (cross-attention modules are excluded: they "
            "train in full)."
        )
    return targets


def apply_lora(
    model: SpliceModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> SpliceModel:
    """
    Add LoRA to the decoder (with PEFT, in place) and train only the LoRA and the conditioning parameters.

    `model.decoder` stays the same module, with its linear layers wrapped by PEFT, so the composite's `forward` and
    `generate` are unchanged. LoRA starts as a zero update: outputs are unchanged until training.

    Args:
        model (`SpliceModel`): the composite model.
        r (`int`, *optional*, defaults to 8): LoRA rank.
        alpha (`int`, *optional*, defaults to 16): LoRA scaling numerator (`alpha / r`).
        dropout (`float`, *optional*, defaults to 0.0): dropout on the LoRA input.
        target_modules (`list[str]`, *optional*): decoder module names (or their last components, e.g. `"q_proj"`)
            to adapt. Defaults to every linear layer inside the decoder's transformer blocks. Cross-attention
            modules are never adapted: they train in full.

    Returns:
        `SpliceModel`: the same model.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("apply_lora needs PEFT: `pip install peft`.") from error
    if lora_settings(model) is not None:
        raise ValueError("LoRA is already applied to this model; applying it twice is not supported.")
    targets = _resolve_lora_targets(model, target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores its weight transposed; PEFT needs to know to avoid a warning and a config rewrite.
        fan_in_fan_out=isinstance(model.decoder.get_submodule(targets[0]), Conv1D),
    )
    inject_adapter_in_model(config, model.decoder)
    apply_freeze_policy(model, "encoder+decoder")
    return model


def lora_settings(model: SpliceModel) -> dict[str, Any] | None:
    """
    The LoRA on the decoder, as `apply_lora`'s arguments, read from the config PEFT keeps on it (`peft_config`).

    Args:
        model (`SpliceModel`): the composite model.

    Returns:
        `dict` or `None`: `{"r", "alpha", "dropout", "target_modules"}` (full decoder module names, in module order);
        `None` when the decoder has no LoRA.
    """
    config = getattr(model.decoder, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = set(config.target_modules)
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": [name for name, _ in model.decoder.named_modules() if name in targets],
    }
