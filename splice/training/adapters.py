"""Adapter-only checkpoints: the trainable weights, plus enough to rebuild the frozen base they apply to."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedConfig

from ..registry import model_class as registered_model_class
from .freezing import apply_freeze_policy, freeze_policy_of
from .lora import apply_lora, lora_settings

if TYPE_CHECKING:
    from ..models import SpliceModel

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


@dataclass(frozen=True)
class TrainingSetup:
    r"""
    How a model was set up for training: what an adapter checkpoint records and [`load_adapter`] replays.

    Args:
        freeze (`str`, *optional*): the freeze policy its trainable parameters follow (`None`: a hand-picked set, which
            the adapter's weights name).
        lora (`dict`, *optional*): the arguments of [`apply_lora`] (`r`, `alpha`, `dropout`, `target_modules`);
            `None` without LoRA.
    """

    freeze: str | None = None
    lora: dict[str, Any] | None = None

    @classmethod
    def of(cls, model: SpliceModel) -> TrainingSetup:
        """The setup the model shows: the policy its `requires_grad` flags follow and the LoRA PEFT put on it."""
        return cls(freeze=freeze_policy_of(model), lora=lora_settings(model))


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    The parameters that require gradients (each shared parameter once), detached.

    Args:
        model (`nn.Module`): any model.

    Returns:
        `dict[str, torch.Tensor]`: name → tensor, names as in `model.named_parameters()`.
    """
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


def save_adapter(
    model: SpliceModel,
    directory: str | os.PathLike,
    base: str | os.PathLike | dict[str, str],
    setup: TrainingSetup | None = None,
) -> None:
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
        setup ([`TrainingSetup`], *optional*): the freeze policy and LoRA to record; defaults to
            `TrainingSetup.of(model)`, what the model shows.
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
    setup = setup or TrainingSetup.of(model)
    adapter_config = {
        "base_model": base,
        "splice_config": model.config.to_dict(),
        "freeze": setup.freeze,
        "lora": setup.lora,
    }
    with open(os.path.join(directory, ADAPTER_CONFIG_NAME), "w") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)


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
    model_class = model_class or registered_model_class(adapter_config["splice_config"]["model_type"])
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
