"""Freeze policies: which parameters of a splice model train.

A splice model has three groups of parameters: the encoder, the decoder, and the *conditioning* parameters that join
them (the decoder's native cross-attention, `enc_to_dec_proj`, injected cross-attention blocks, the prefix projector;
see `splice.conditioning.conditioning_parameter_names`). SmallCap trains only the conditioning parameters
("encoder+decoder" frozen); LoRA ([`splice.training.lora`]) adds low-rank updates to the frozen decoder's own layers on
top of that, and an adapter checkpoint ([`splice.training.adapters`]) holds only the trainable weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..conditioning import trains_with_conditioning

if TYPE_CHECKING:
    from ..models import SpliceModel

FREEZE_POLICIES = ("none", "encoder", "encoder+decoder")


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
    trains = _trainable_under(model, policy)
    for name, param in model.named_parameters():
        param.requires_grad_(trains[name])
    return trainable_counts(model, verbose)


def freeze_policy_of(model: SpliceModel) -> str | None:
    """
    The freeze policy the model's trainable parameters follow, read from their `requires_grad`.

    Args:
        model (`SpliceModel`): the composite model.

    Returns:
        `str` or `None`: the first of `FREEZE_POLICIES` that trains exactly the parameters that require gradients;
        `None` for any other (hand-picked) set.
    """
    trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    return next((policy for policy in FREEZE_POLICIES if _trainable_under(model, policy) == trainable), None)


def _trainable_under(model: SpliceModel, policy: str) -> dict[str, bool]:
    """Whether each parameter (by name, shared ones once) trains under `policy`."""
    conditioning = trains_with_conditioning(model)
    encoder_params = {id(param) for param in model.encoder.parameters()}
    trains = {}
    for name, param in model.named_parameters():
        if policy == "none":
            trains[name] = True
        elif policy == "encoder":
            # A weight shared with the encoder (tie_encoder_decoder) stays frozen with it.
            trains[name] = id(param) not in encoder_params
        else:
            trains[name] = name in conditioning
    return trains
