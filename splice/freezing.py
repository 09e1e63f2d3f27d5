"""What trains: freeze policies, LoRA on the decoder, and adapter-only checkpoints.

A splice model has three groups of parameters: the encoder, the decoder, and the *conditioning* parameters that join
them (the decoder's native cross-attention, `enc_to_dec_proj`, injected cross-attention blocks, the prefix projector).
SmallCap trains only the conditioning parameters ("encoder+decoder" frozen); LoRA adds low-rank updates to the frozen
decoder's own layers on top of that. An adapter checkpoint then holds only the trainable weights plus enough to rebuild
the frozen base they apply to.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedConfig
from transformers.pytorch_utils import Conv1D

from .injection import cross_attention_parameters, find_decoder_layers
from .modeling import (
    CROSS_ATTENTION_NAMES,
    EncoderDecoderModel,
    SpeechEncoderDecoderModel,
    SpliceModel,
    VisionEncoderDecoderModel,
)
from .smallcap import SmallCapModel

FREEZE_POLICIES = ("none", "encoder", "encoder+decoder")
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"

# Name fragments of the cross-attention that decoders build themselves with `add_cross_attention=True`: GPT-2
# `crossattention` / `ln_cross_attn`, BERT-likes `crossattention`, BART / TrOCR `encoder_attn(_layer_norm)`.
_MODEL_CLASSES = (
    SpliceModel,
    VisionEncoderDecoderModel,
    EncoderDecoderModel,
    SpeechEncoderDecoderModel,
    SmallCapModel,
)
# Set by `apply_freeze_policy` / `apply_lora` on the model, so `save_adapter` can record how to rebuild it.
_SETUP_ATTR = "_splice_training_setup"


def conditioning_parameter_names(model: SpliceModel) -> set[str]:
    """
    Names of the parameters that join the encoder to the decoder.

    Args:
        model (`SpliceModel`): the composite model.

    Returns:
        `set[str]`: dotted names as in `model.named_parameters()`: the decoder's native cross-attention (with its
        layer norms) when `conditioning="native"`, injected cross-attention blocks, and every parameter outside the
        encoder and the decoder (`enc_to_dec_proj`, the prefix projector, modules a subclass adds).
    """
    names = set()
    if model.config.conditioning == "native":
        # SmallCap keeps GPT-2's cross-attention layer norms frozen (`train_cross_attention_norm=False`).
        with_norms = getattr(model.config, "train_cross_attention_norm", True)
        names.update(
            f"decoder.{name}"
            for name, _ in model.decoder.named_parameters()
            if _is_native_cross_attention(name) and (with_norms or not _is_norm(name))
        )
    names.update(name for name, _ in cross_attention_parameters(model))
    names.update(name for name, _ in model.named_parameters() if name.split(".", 1)[0] not in ("encoder", "decoder"))
    return names


def _is_native_cross_attention(name: str) -> bool:
    return any(fragment in part for part in name.split(".") for fragment in CROSS_ATTENTION_NAMES)


def _is_norm(name: str) -> bool:
    return any(fragment in name.lower() for fragment in ("ln_", "layernorm", "layer_norm", "norm."))


def _is_lora_parameter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def trainable_counts(model: nn.Module, verbose: bool = True) -> dict[str, int]:
    """
    Count trainable and total parameters (each shared parameter once) and print them in PEFT's format.

    Args:
        model (`nn.Module`): any model.
        verbose (`bool`, *optional*, defaults to `True`): print the counts.

    Returns:
        `dict[str, int]`: `{"trainable": n, "total": N}`.
    """
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    if verbose:
        share = 100 * trainable / total
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")
    return {"trainable": trainable, "total": total}


def _training_setup(model: SpliceModel) -> dict[str, Any]:
    if _SETUP_ATTR not in model.__dict__:
        model.__dict__[_SETUP_ATTR] = {"freeze": None, "lora": None}
    return model.__dict__[_SETUP_ATTR]


def apply_freeze_policy(model: SpliceModel, policy: str, verbose: bool = True) -> dict[str, int]:
    """
    Choose which parameters train.

    Args:
        model (`SpliceModel`): the composite model, changed in place.
        policy (`str`): `"none"` trains everything; `"encoder"` freezes the encoder; `"encoder+decoder"` trains only
            the conditioning parameters (see [`conditioning_parameter_names`]) and LoRA weights, if any (SmallCap).
        verbose (`bool`, *optional*, defaults to `True`): print the counts.

    Returns:
        `dict[str, int]`: `{"trainable": n, "total": N}`, also printed.

    Raises:
        `ValueError`: if `policy` is not one of `FREEZE_POLICIES`.
    """
    if policy not in FREEZE_POLICIES:
        raise ValueError(f"freeze={policy!r} is not one of {FREEZE_POLICIES}.")
    conditioning = conditioning_parameter_names(model)
    encoder_params = {id(param) for param in model.encoder.parameters()}
    for name, param in model.named_parameters():
        if policy == "none":
            trainable = True
        elif policy == "encoder":
            # A weight shared with the encoder (tie_encoder_decoder) stays frozen with it.
            trainable = id(param) not in encoder_params
        else:
            trainable = name in conditioning or _is_lora_parameter(name)
        param.requires_grad_(trainable)
    _training_setup(model)["freeze"] = policy
    return trainable_counts(model, verbose)


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
        if _is_native_cross_attention(name)
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
    if _training_setup(model)["lora"] is not None:
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
    _training_setup(model)["lora"] = {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}
    apply_freeze_policy(model, "encoder+decoder")
    return model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    The parameters that require gradients (each shared parameter once), detached.

    Args:
        model (`nn.Module`): any model.

    Returns:
        `dict[str, torch.Tensor]`: name → tensor, names as in `model.named_parameters()`.
    """
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


def save_adapter(model: SpliceModel, directory: str | os.PathLike, base: str | os.PathLike | dict[str, str]) -> None:
    """
    Save only the trainable weights, and how to rebuild the frozen model they apply to.

    Writes `adapter_model.safetensors` (the trainable weights) and `adapter_config.json`:
    `{"base_model": ..., "splice_config": ..., "freeze": ..., "lora": ...}`.

    Args:
        model (`SpliceModel`): the trained model.
        directory (`str` or `os.PathLike`): where to write.
        base (`str`, `os.PathLike` or `dict`): where the frozen weights come from: the path or hub id of a full
            splice checkpoint (saved before `apply_lora`), or `{"encoder": ..., "decoder": ...}` for a model built
            with `from_encoder_decoder_pretrained`.
    """
    if isinstance(base, dict):
        if set(base) != {"encoder", "decoder"}:
            raise ValueError(
                f"base must be a checkpoint path or {{'encoder': ..., 'decoder': ...}}, got keys {set(base)}"
            )
        base = {part: os.fspath(path) for part, path in base.items()}
    else:
        base = os.fspath(base)
    weights = {name: tensor.contiguous() for name, tensor in trainable_state_dict(model).items()}
    if not weights:
        raise ValueError("The model has no trainable parameters: there is no adapter to save.")
    os.makedirs(directory, exist_ok=True)
    save_file(weights, os.path.join(directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    setup = _training_setup(model)
    adapter_config = {
        "base_model": base,
        "splice_config": model.config.to_dict(),
        "freeze": setup["freeze"],
        "lora": setup["lora"],
    }
    with open(os.path.join(directory, ADAPTER_CONFIG_NAME), "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)


def _model_class(model_type: str) -> type[SpliceModel]:
    for model_class in _MODEL_CLASSES:
        if model_class.config_class.model_type == model_type:
            return model_class
    raise ValueError(f"The adapter's splice_config has model_type={model_type!r}, which is not a splice model.")


def _build_base(adapter_config: dict[str, Any], model_class: type[SpliceModel]) -> SpliceModel:
    base = adapter_config["base_model"]
    if isinstance(base, str):
        return model_class.from_pretrained(base)
    # The composite's own fields (conditioning, special tokens, ...) rebuild the same joining modules.
    splice_config = adapter_config["splice_config"]
    own_fields = set(model_class.config_class.__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
    own_fields -= {"encoder", "decoder"}
    fields = {key: splice_config[key] for key in own_fields if key in splice_config}
    return model_class.from_encoder_decoder_pretrained(base["encoder"], base["decoder"], **fields)


def load_adapter(directory: str | os.PathLike, model_class: type[SpliceModel] | None = None) -> SpliceModel:
    """
    Rebuild a model saved with [`save_adapter`]: the base, LoRA if it was applied, then the adapter weights.

    Args:
        directory (`str` or `os.PathLike`): the adapter directory.
        model_class (`type[SpliceModel]`, *optional*): the class to build; defaults to the one of the saved config's
            `model_type`.

    Returns:
        `SpliceModel`: a model giving the same outputs as the saved one, with the same parameters trainable.

    Raises:
        `ValueError`: if the adapter's weights do not match the rebuilt model's trainable parameters (names or shapes).
    """
    with open(os.path.join(directory, ADAPTER_CONFIG_NAME)) as f:
        adapter_config = json.load(f)
    model_class = model_class or _model_class(adapter_config["splice_config"]["model_type"])
    model = _build_base(adapter_config, model_class)
    if adapter_config["lora"] is not None:
        apply_lora(model, **adapter_config["lora"])
    if adapter_config["freeze"] is not None:
        apply_freeze_policy(model, adapter_config["freeze"], verbose=False)

    weights_path = os.path.join(directory, ADAPTER_WEIGHTS_NAME)
    with safe_open(weights_path, framework="pt") as f:
        weights = {key: f.get_tensor(key) for key in f.keys()}
    params = dict(model.named_parameters())
    if adapter_config["freeze"] is None:  # trained with a hand-picked set: the adapter itself says what trains
        for name, param in params.items():
            param.requires_grad_(name in weights)
    expected = {name for name, param in params.items() if param.requires_grad}
    unexpected = sorted(set(weights) - expected)
    missing = sorted(expected - set(weights))
    if unexpected or missing:
        raise ValueError(
            f"The adapter at {weights_path} does not match the trainable parameters of the rebuilt model. "
            f"Unexpected keys: {unexpected}. Missing keys: {missing}."
        )
    mismatched = [
        f"{name}: {tuple(tensor.shape)} vs {tuple(params[name].shape)}"
        for name, tensor in weights.items()
        if tensor.shape != params[name].shape
    ]
    if mismatched:
        raise ValueError(f"The adapter's shapes differ from the rebuilt model's (adapter vs model): {mismatched}.")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return model
