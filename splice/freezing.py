"""Old import path of freeze policies, LoRA and adapter checkpoints: see `splice.training.freezing`,
`splice.training.lora` and `splice.training.adapters`."""

from .conditioning import conditioning_parameter_names
from .training.adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    load_adapter,
    save_adapter,
    trainable_state_dict,
)
from .training.freezing import FREEZE_POLICIES, apply_freeze_policy, trainable_counts
from .training.lora import apply_lora

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "FREEZE_POLICIES",
    "apply_freeze_policy",
    "apply_lora",
    "conditioning_parameter_names",
    "load_adapter",
    "save_adapter",
    "trainable_counts",
    "trainable_state_dict",
]
