"""The collator that turns records (see `splice.data.loaders`) into model inputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .io import UNREADABLE_IMAGE_ERRORS, open_image

logger = logging.getLogger(__name__)


class SpliceCollator:
    r"""
    Builds a batch from records: encoder inputs (processor outputs), `labels` with -100 on padding and on prompt
    tokens, and, when records carry a decoder prompt, `decoder_input_ids` and `decoder_attention_mask`.

    Args:
        tokenizer: the decoder's tokenizer (targets end with its EOS; see `splice.data.builtin.train_tokenizer`).
        image_processor (*optional*): for records with `"image"`.
        source_tokenizer (*optional*): for records with `"source"` (defaults to `tokenizer`).
        decoder_start_token_id (*optional*): the decoder's start token. The model prepends it when shifting labels, so
            a target that already begins with it (BERT's [CLS]) has it removed; prompted records need it.
        eos_token_id (*optional*): every target ends with it (GPT-2's tokenizer adds none), so the model learns to stop.
        max_target_length (*optional*): truncate targets to this many tokens (EOS included).

    Use `SpliceCollator.for_model(model, tokenizer, image_processor)` to take the ids from the model.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any = None,
        source_tokenizer: Any = None,
        decoder_start_token_id: int | None = None,
        eos_token_id: int | None = None,
        max_target_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source_tokenizer = source_tokenizer or tokenizer
        self.decoder_start_token_id = decoder_start_token_id
        self.eos_token_id = eos_token_id
        self.max_target_length = max_target_length
        self.skipped = 0

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, image_processor: Any = None, **kwargs: Any) -> SpliceCollator:
        """A collator using the model's `decoder_start_token_id` and `eos_token_id`."""
        eos = model.config.eos_token_id
        return cls(
            tokenizer,
            image_processor,
            decoder_start_token_id=model.config.decoder_start_token_id,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            **kwargs,
        )

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if records and "image" in records[0]:
            images, kept = [], []
            for record in records:
                try:
                    images.append(open_image(record["image"]))
                    kept.append(record)
                except UNREADABLE_IMAGE_ERRORS:
                    self.skipped += 1  # a file that went bad after loading: drop it, count it, carry on
                    logger.warning(f"Skipped an unreadable image ({self.skipped} so far).")
            if not kept:
                raise ValueError("Every image in this batch is unreadable; check the data source.")
            records = kept
            batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        elif records and "source" in records[0]:
            source = self.source_tokenizer([r["source"] for r in records], padding=True, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = source["input_ids"], source["attention_mask"]
        batch.update(self.targets(records))
        return batch

    def targets(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Labels (and decoder inputs when prompted) for the records' `"text"` (and optional `"prompt"`)."""
        targets = [self._target_ids(r["text"]) for r in records]
        prompts = [self._ids(r["prompt"]) if r.get("prompt") else [] for r in records]
        # GPT-2's tokenizer has no pad token; padded positions are masked, so any id in the vocabulary does.
        pad = next((t for t in (self.tokenizer.pad_token_id, self.eos_token_id) if t is not None), 0)
        if not any(prompts):
            width = max(len(t) for t in targets)
            labels = torch.full((len(targets), width), -100, dtype=torch.long)  # [B, T]; -100: no loss on padding
            for i, ids in enumerate(targets):
                labels[i, : len(ids)] = torch.tensor(ids)
            return {"labels": labels}
        # With a prompt the decoder reads start + prompt + target and is scored on the target only.
        if self.decoder_start_token_id is None:
            raise ValueError("Prompted targets need `decoder_start_token_id` on the collator.")
        sequences = [[self.decoder_start_token_id] + p + t for p, t in zip(prompts, targets)]
        width = max(len(s) for s in sequences) - 1
        decoder_input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        decoder_attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        labels = torch.full((len(sequences), width), -100, dtype=torch.long)
        for i, (sequence, prompt) in enumerate(zip(sequences, prompts)):
            n = len(sequence) - 1
            decoder_input_ids[i, :n] = torch.tensor(sequence[:-1])
            decoder_attention_mask[i, :n] = 1
            labels[i, len(prompt) : n] = torch.tensor(sequence[len(prompt) + 1 :])  # -100 under the prompt
        return {
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_attention_mask,
            "labels": labels,
        }

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _target_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text)["input_ids"]
        if ids and ids[0] == self.decoder_start_token_id:
            ids = ids[1:]
        if self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids = ids + [self.eos_token_id]
        if self.max_target_length is not None and len(ids) > self.max_target_length:
            ids = ids[: self.max_target_length - 1] + ids[-1:]  # keep the final EOS
        return ids
