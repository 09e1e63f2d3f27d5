"""`Seq2SeqTrainer` whose checkpoints resume exactly: weights under the live module names, loaded strictly.

transformers writes `model.safetensors` in the checkpoint format (v5 renames some modules on save, e.g. ViT's), and on
`--resume` loads it with `strict=False`, so weights saved under one name and expected under another are dropped with a
warning: the run goes on from initial values. Each checkpoint here also holds the model's state dict as it lives
(`splice_weights.safetensors`, shared tensors once) and its processor; resuming loads that file strictly, and a
mismatch is an error naming the keys.

Under FSDP (`training.fsdp`; also on CPU processes, which accelerate alone would train with DDP) the live weights are
gathered from the shards into that file, and loaded back into the shards.

Under `bf16` on a CPU, training steps run attention through PyTorch's math kernel (see `SpliceTrainer.compute_loss`).
"""

from __future__ import annotations

import contextlib
import os
from functools import partial
from typing import Any

from safetensors.torch import load_model, save_file, save_model
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Seq2SeqTrainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import fsdp

LIVE_WEIGHTS = "splice_weights.safetensors"


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not match the model being resumed."""


class SpliceTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` with exact resume (see the module docstring).

    Args:
        processor (*optional*): saved into every checkpoint, so `splice caption checkpoint-N` works.
        args, kwargs: those of `Seq2SeqTrainer`.
    """

    def __init__(self, *args: Any, processor: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.processor = processor

    def create_accelerator_and_postprocess(self) -> None:
        """transformers' accelerator; FSDP asked for on CPU processes selected (`training.fsdp`), FSDP1 refused."""
        super().create_accelerator_and_postprocess()
        if not self.is_fsdp_enabled:
            self.is_fsdp_enabled = fsdp.enable_on_cpu(self.accelerator, self.args)
        if self.is_fsdp_enabled:
            fsdp.require_fsdp2(self.accelerator.state.fsdp_plugin)

    def compute_loss(self, model: nn.Module, inputs: dict, *args: Any, **kwargs: Any) -> Any:
        """transformers' loss; under `bf16` on a CPU, with `scaled_dot_product_attention` on the math kernel: the fused
        CPU flash-attention kernel's bfloat16 backward is about ten times slower than its float32 one at these sizes
        (short sequences, small heads), which cancels the speed-up of bfloat16 everywhere else."""
        math_attention = self.args.bf16 and self.args.device.type == "cpu"
        with sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext():
            return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model: nn.Module, inputs: dict, prediction_loss_only: bool, ignore_keys: Any = None,
                        **gen_kwargs: Any) -> Any:  # fmt: skip
        """transformers' step, minus its side effect: it writes the library defaults (`max_length=20`, ...) into the
        model's own generation config, after which every `generate` warns that `max_length` and `max_new_tokens` are
        both set, and a saved model carries settings nobody chose. The settings it filled are unset again."""
        config = self.accelerator.unwrap_model(model).generation_config
        unset = [key for key in config._get_default_generation_params() if getattr(config, key, None) is None]
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            for key in unset:
                setattr(config, key, None)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        if self.is_fsdp_enabled:
            fsdp.complete_optimizer_state(self.optimizer)  # else the sharded optimizer state does not load back
        super()._save_checkpoint(model, trial)
        sharded = fsdp.gather_weights(self.accelerator, self.model) if self.is_fsdp_enabled else None  # collective
        if not self.is_world_process_zero():
            return
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.processor is not None:
            self.processor.save_pretrained(folder)
        if sharded is not None:
            save_file(fsdp.stored_once(sharded), os.path.join(folder, LIVE_WEIGHTS))
        else:
            save_model(self.accelerator.unwrap_model(self.model), os.path.join(folder, LIVE_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        path = os.path.join(resume_from_checkpoint, LIVE_WEIGHTS)
        if not os.path.isfile(path):
            raise CheckpointMismatchError(
                f"{resume_from_checkpoint} has no {LIVE_WEIGHTS}: it was written by another tool or not completely "
                "(interrupted while saving). Delete that directory to resume from the checkpoint before it."
            )
        load = fsdp.load_weights if self.is_fsdp_enabled else partial(load_model, strict=False)
        missing, unexpected = load(model, path)
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"The checkpoint {resume_from_checkpoint} does not match the model: missing keys {sorted(missing)[:8]}"
                f" ({len(missing)}), unexpected keys {sorted(unexpected)[:8]} ({len(unexpected)}). Resume with the "
                "same --encoder/--decoder/--conditioning/--freeze/--lora-rank/--preset as the interrupted run."
            )
