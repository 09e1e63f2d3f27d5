"""A user-defined SmallCap-style captioner built on splice, trained with `Seq2SeqTrainer`.

It changes the architecture in one place, `adapt_encoder_states`: a learned *global image token* (the mean of the
patch states, projected) is prepended to the encoder states the decoder reads. Everything the trainer and `generate`
need — forward contract, `main_input_name`, `get_encoder`, `prepare_decoder_input_ids_from_labels`, special tokens,
save/load, Auto registration — comes from splice's base class. See docs/custom-models.md.

Run: `python examples/custom_smallcap.py` (offline: tiny random CLIP + GPT-2, generated images).
"""

from __future__ import annotations

import tempfile
from typing import ClassVar

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    GPT2Config,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

import splice
from splice.training.freezing import apply_freeze_policy


@strict
class GlobalTokenCaptionerConfig(splice.VisionEncoderDecoderConfig):
    """Adds one field; everything else (sub-configs, conditioning, special tokens) is inherited."""

    model_type: ClassVar[str] = "global-token-captioner"
    global_token: bool = True


class GlobalTokenCaptioner(splice.VisionEncoderDecoderModel):
    config_class = GlobalTokenCaptionerConfig

    def __init__(self, config=None, encoder=None, decoder=None):
        super().__init__(config, encoder, decoder)
        width = splice.encoders.encoder_hidden_size(self.config.encoder)
        self.global_proj = nn.Linear(width, width)
        self.post_init()

    def adapt_encoder_states(self, encoder_hidden_states, encoder_attention_mask):
        if self.config.global_token:
            summary = self.global_proj(encoder_hidden_states.mean(dim=1, keepdim=True))  # [B, 1, E]
            encoder_hidden_states = torch.cat([summary, encoder_hidden_states], dim=1)  # [B, 1+S, E]
            if encoder_attention_mask is not None:
                encoder_attention_mask = torch.cat([encoder_attention_mask[:, :1], encoder_attention_mask], dim=1)
        return super().adapt_encoder_states(encoder_hidden_states, encoder_attention_mask)


# Auto registration: `AutoModelForImageTextToText.from_pretrained(dir)` now returns GlobalTokenCaptioner.
AutoConfig.register(GlobalTokenCaptionerConfig.model_type, GlobalTokenCaptionerConfig, exist_ok=True)
AutoModelForImageTextToText.register(GlobalTokenCaptionerConfig, GlobalTokenCaptioner, exist_ok=True)


def build() -> GlobalTokenCaptioner:
    """SmallCap's recipe at toy size: a CLIP vision tower, GPT-2 with reduced injected cross-attention (r=4)."""
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    gpt2 = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=40, bos_token_id=1, eos_token_id=2, n_positions=32)
    config = GlobalTokenCaptionerConfig.from_encoder_decoder_configs(
        vision, gpt2, conditioning="injected", cross_attention_reduce_factor=4, pad_token_id=0
    )
    return GlobalTokenCaptioner(config)


def main(steps: int = 30) -> dict:
    torch.manual_seed(0)
    model = build()
    counts = apply_freeze_policy(model, "encoder+decoder")  # only cross-attention and our global token train
    # Eight images (one solid colour each) and their three-token captions, as tensors: no download, no tokenizer.
    pixel_values = torch.stack([torch.full((3, 32, 32), v) for v in torch.linspace(-1, 1, 8)])
    labels = torch.stack([torch.tensor([3 + i, 11 + i, 19 + i, 2]) for i in range(8)])
    dataset = [{"pixel_values": p, "labels": y} for p, y in zip(pixel_values, labels)]
    with tempfile.TemporaryDirectory() as output_dir:
        args = Seq2SeqTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=8,
            max_steps=steps,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            logging_steps=10,
            predict_with_generate=True,
        )
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
        trainer.train()
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        predictions = trainer.predict(dataset, max_new_tokens=4).predictions
        model.save_pretrained(output_dir)
        reloaded = AutoModelForImageTextToText.from_pretrained(output_dir)
        same = torch.equal(
            reloaded.generate(pixel_values, max_new_tokens=4), model.generate(pixel_values, max_new_tokens=4)
        )
    return {"trainable": counts["trainable"], "losses": losses, "predictions": predictions, "reload_identical": same}


if __name__ == "__main__":
    result = main()
    print(f"trainable parameters: {result['trainable']:,}; losses: {result['losses']}")
    print(f"reloaded model generates the same ids: {result['reload_identical']}")
