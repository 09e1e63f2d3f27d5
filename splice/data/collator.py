"""The collator that turns records (see `splice.data.loaders`) into model inputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ..conditioning.base import position_limit
from ..data_io import UNREADABLE_IMAGE_ERRORS, DataError, open_image, shorten

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
        max_positions (*optional*): the decoder's position limit; `for_model` takes it from the decoder config
            (`n_positions` / `max_position_embeddings`, see `position_limit`).
        max_source_length (*optional*): the text encoder's position limit for `"source"` records (`for_model` sets it).

    Overlong inputs are truncated, never an error: a target longer than `max_positions` (with a prompt: prompt plus
    target) would index past the decoder's position embeddings, so the target is cut to fit, keeping its final EOS, and
    a prompt is cut from its start; a source is cut to `max_source_length`. One warning, the first time, gives the
    count in that batch; every truncation is counted in `truncated` (and unreadable images in `skipped`).
    A record whose `"text"` is not a string raises `DataError`.

    Use `SpliceCollator.for_model(model, tokenizer, image_processor)` to take the ids and the limits from the model.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any = None,
        source_tokenizer: Any = None,
        decoder_start_token_id: int | None = None,
        eos_token_id: int | None = None,
        max_target_length: int | None = None,
        max_positions: int | None = None,
        max_source_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source_tokenizer = source_tokenizer or tokenizer
        self.decoder_start_token_id = decoder_start_token_id
        self.eos_token_id = eos_token_id
        self.max_target_length = max_target_length
        self.max_positions = max_positions
        self.max_source_length = max_source_length
        self.skipped = 0
        self.truncated = 0
        self._warned = False

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, image_processor: Any = None, **kwargs: Any) -> SpliceCollator:
        """A collator using the model's `decoder_start_token_id`, `eos_token_id` and position limits."""
        eos = model.config.eos_token_id
        limits = {
            "max_positions": position_limit(getattr(model.config, "decoder", model.config)),
            "max_source_length": position_limit(getattr(model.config, "encoder", None)),
        }
        return cls(
            tokenizer,
            image_processor,
            decoder_start_token_id=model.config.decoder_start_token_id,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            **(limits | kwargs),
        )

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if records and "image" in records[0]:
            images, kept = [], []
            for record in records:
                try:
                    images.append(open_image(record["image"]))
                    kept.append(record)
                except UNREADABLE_IMAGE_ERRORS as error:
                    self.skipped += 1  # a file that went bad after loading: drop it, count it, carry on
                    logger.warning(f"Skipped an unreadable image ({self.skipped} so far): {error}")
            if not kept:
                raise ValueError("Every image in this batch is unreadable; check the data source.")
            records = kept
            batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        elif records and "source" in records[0]:
            source = self._sources(records)
            batch["input_ids"], batch["attention_mask"] = source["input_ids"], source["attention_mask"]
        batch.update(self.targets(records))
        return batch

    def targets(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Labels (and decoder inputs when prompted) for the records' `"text"` (and optional `"prompt"`)."""
        for i, record in enumerate(records):
            if not isinstance(record.get("text"), str):
                raise DataError(
                    "must be a string", line=f"batch record {i}", field="text", value=record.get("text"),
                    fix="give every record a caption string (the loaders in splice.data check this)",
                )  # fmt: skip
        fitted = [self._fit(r["text"]) for r in records]
        targets = [ids for ids, _ in fitted]
        cut = sum(was_cut for _, was_cut in fitted)
        prompts = [self._ids(r["prompt"]) if r.get("prompt") else [] for r in records]
        if self.max_positions is not None:  # the decoder reads prompt + target (after the start token)
            room = [self.max_positions - len(t) for t in targets]
            cut += sum(len(p) > r for p, r in zip(prompts, room))
            prompts = [p[len(p) - r :] if len(p) > r else p for p, r in zip(prompts, room)]
        self._count(cut, len(records), "target")
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

    def _count(self, cut: int, total: int, what: str) -> None:
        if not cut:
            return
        self.truncated += cut
        limit = self.max_source_length if what == "source" else self._target_limit()
        message = (
            f"Truncated {cut} of {total} {what}s in this batch to fit {limit} tokens (the model's position limit, or "
            "max_target_length) "
            f"(further truncations are counted in `collator.truncated`, {self.truncated} so far)."
        )
        if self._warned:
            logger.debug(message)
        else:
            self._warned = True
            logger.warning(message)

    def _sources(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        texts = [r["source"] for r in records]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError("must be a string", line=f"batch record {i}", field="source", value=shorten(text))
        if self.max_source_length is None:
            return self.source_tokenizer(texts, padding=True, return_tensors="pt")
        lengths = [len(ids) for ids in self.source_tokenizer(texts)["input_ids"]]
        self._count(sum(n > self.max_source_length for n in lengths), len(texts), "source")
        return self.source_tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_source_length, return_tensors="pt"
        )

    def _target_limit(self) -> int | None:
        limits = [n for n in (self.max_target_length, self.max_positions) if n is not None]
        return max(min(limits), 1) if limits else None

    def target_ids(self, text: str) -> list[int]:
        """The token ids a target trains on: EOS-terminated and cut to fit the limits, as in `targets`."""
        return self._fit(text)[0]

    def _fit(self, text: str) -> tuple[list[int], bool]:
        ids = self.tokenizer(text)["input_ids"]
        if ids and ids[0] == self.decoder_start_token_id:
            ids = ids[1:]
        if self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            ids = ids + [self.eos_token_id]
        limit = self._target_limit()
        if limit is not None and len(ids) > limit:
            return ids[: limit - 1] + ids[-1:], True  # keep the final EOS
        return ids, False
