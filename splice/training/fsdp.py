"""FSDP (PyTorch's FSDP2, `fully_shard`) through accelerate, on GPUs and on CPU processes (gloo).

`accelerate launch --config_file configs/accelerate_fsdp.yaml -m splice.cli train ...` asks for FSDP (so does
Trainer's `fsdp` argument). accelerate (1.7 to 1.16, the tested range) selects FSDP only on an accelerator: on CPU
processes its state stays `MULTI_CPU`, the FSDP plugin is dropped and the model is wrapped in DDP, without a word
(`AcceleratorState.__init__` switches to `DistributedType.FSDP` only from `MULTI_GPU`/`MULTI_XPU`/...). PyTorch's
FSDP2 itself runs on CPU with gloo, so [`enable_on_cpu`] makes on CPU the selection accelerate makes on a GPU;
accelerate then shards the model (`fsdp2_prepare_model`) and saves / loads the optimizer state (`save_fsdp_optimizer`)
as it does anywhere.

The weights a checkpoint holds as they live (`splice_weights.safetensors`, see `training.trainer`) are the full,
gathered ones ([`gather_weights`]: a collective, every process calls it), loaded back into the shards on `--resume`
([`load_weights`]); the optimizer state is accelerate's FSDP file (`optimizer.bin`), so a sharded run resumes
under FSDP.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from safetensors.torch import load_file
from torch import nn

from .config import ConfigError


def requested(args: Any) -> bool:
    """FSDP asked for: Trainer's `fsdp` argument, or `accelerate launch` with an FSDP config (`ACCELERATE_USE_FSDP`)."""
    return args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_on_cpu(accelerator: Accelerator, args: Any) -> bool:
    r"""
    Select FSDP on CPU processes, as accelerate does on GPUs (see the module docstring); before anything is prepared.

    Args:
        accelerator: the trainer's, just made.
        args: the training arguments (their `fsdp_plugin_args`, else the plugin accelerate reads from the environment
            `accelerate launch` sets).

    Returns:
        Whether FSDP is now on (`False`: not asked for, or not on CPU processes, where accelerate decides alone).
    """
    if not requested(args) or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin_args = args.fsdp_plugin_args or {}
    plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state = accelerator.state
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # accelerate keeps the two states agreeing
    return True


def require_fsdp2(plugin: FullyShardedDataParallelPlugin) -> None:
    """Refuse FSDP1: splice gathers and loads checkpoint weights by the model's own parameter names, which FSDP1's
    flat-parameter wrappers change (transformers deprecates FSDP1 too).

    Raises:
        `ConfigError`: naming the setting and the fix.
    """
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"fsdp_version={plugin.fsdp_version}: splice trains with FSDP2 only; set fsdp_version: 2 in the accelerate "
            "config (as configs/accelerate_fsdp.yaml does) or fsdp_config={'version': 2}."
        )


def tied_names(model: nn.Module) -> list[list[str]]:
    """The state-dict names of each parameter or buffer, tied names together (tied names hold one object)."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    return list(names.values())


def gather_weights(accelerator: Accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded model, on the main process (empty elsewhere), tied names sharing one tensor
    as in `model.state_dict()`; every process must call it (it gathers the shards)."""
    full = accelerator.get_state_dict(model)
    weights = {}
    for names in tied_names(model) if full else ():
        tensor = next(full[name] for name in names if name in full)
        weights |= dict.fromkeys(names, tensor)
    return weights


def stored_once(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor of `weights` once, under the first of its names in sorted order (the name
    `safetensors.torch.save_model` keeps for tied weights)."""
    kept: dict[int, str] = {}
    for name in sorted(weights):
        kept.setdefault(id(weights[name]), name)
    return {name: weights[name].contiguous() for name in kept.values()}


def load_weights(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    r"""
    Load a full safetensors state dict (a checkpoint's `splice_weights.safetensors`) into a sharded model, each
    process keeping its shard; names tied to one parameter are filled from the one stored.

    Returns:
        The missing and the unexpected keys; nothing is loaded unless both are empty.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights = load_file(path)
    groups = tied_names(model)
    for names in groups:
        stored = next((name for name in names if name in weights), None)
        for name in names if stored is not None else ():
            weights.setdefault(name, weights[stored])
    live = {name for names in groups for name in names}
    missing, unexpected = sorted(live - weights.keys()), sorted(weights.keys() - live)
    if not missing and not unexpected:
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=True))
    return missing, unexpected


def complete_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each trainable parameter without optimizer state (one that never had a gradient, e.g. a ViT encoder's
    unused pooler) the state a step with a zero gradient at learning rate 0 gives it, leaving every weight and every
    other state as it is. PyTorch's distributed checkpointing (`set_optimizer_state_dict`, which accelerate loads a
    sharded run's optimizer with) refuses a checkpoint that lacks one ("Missing optimizer state for parameter";
    pytorch/pytorch#192202, whose open fix #192307 makes `get_optimizer_state_dict` do the same on save)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper: the torch optimizer inside
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    stateless = {id(p) for p in parameters if p.requires_grad and not optimizer.state.get(p)}
    if not stateless:
        return
    grads = [p.grad for p in parameters]
    rates = [group["lr"] for group in optimizer.param_groups]
    for p in parameters:
        p.grad = torch.zeros_like(p) if id(p) in stateless else None  # a step leaves a parameter without grad alone
    for group in optimizer.param_groups:
        group["lr"] = 0.0 * group["lr"]  # a tensor stays a tensor
    optimizer.step()
    for p, grad in zip(parameters, grads):
        p.grad = grad
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
