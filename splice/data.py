"""Training data: loaders for the usual caption/text formats and the collator that turns records into model inputs.

A record is a dict: `{"image": path | bytes | PIL.Image, "text": target}` for image-to-text,
`{"source": text, "text": target}` for text-to-text; optional `"prompt"` (decoder-side prefix, e.g. SmallCap's
retrieved captions: fed to the decoder, never scored) and `"references"` (all reference captions, for metrics).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What Pillow raises for missing, truncated or non-image files.
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def open_image(image: Any) -> Image.Image:
    """An RGB PIL image from a path, bytes, a `{"bytes"|"path"}` dict (datasets' Image feature) or a PIL image."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, Path)):
        image = Image.open(image)
    image.load()
    return image.convert("RGB")  # grey, palette and RGBA images all become 3-channel


def _readable(image: Any) -> bool:
    try:
        open_image(image)
    except UNREADABLE_IMAGE_ERRORS:
        return False
    return True


def keep_readable(records: list[dict], source: str = "data") -> list[dict]:
    """Drop records whose image cannot be read, and report how many (a corrupt file never stops a run)."""
    kept = [r for r in records if "image" not in r or _readable(r["image"])]
    skipped = len(records) - len(kept)
    if skipped:
        logger.warning(f"{source}: skipped {skipped} of {len(records)} records with unreadable or corrupt images.")
    return kept


def load_imagefolder(directory: str | Path, text_column: str | None = None) -> list[dict]:
    r"""
    Load an image folder in the `datasets` imagefolder convention: images plus `metadata.jsonl` or `metadata.csv` with a
    `file_name` column and a caption column.

    Args:
        directory: the folder.
        text_column (*optional*): caption column; defaults to the first of `text`, `caption`, `captions`, `sentence`.
    """
    directory = Path(directory)
    if (directory / "metadata.jsonl").exists():
        with open(directory / "metadata.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif (directory / "metadata.csv").exists():
        with open(directory / "metadata.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise FileNotFoundError(f"{directory} has neither metadata.jsonl nor metadata.csv (imagefolder convention).")
    if not rows:
        raise ValueError(f"{directory}: the metadata file has no rows.")
    column = text_column or next((c for c in ("text", "caption", "captions", "sentence") if c in rows[0]), None)
    if column is None or "file_name" not in rows[0]:
        raise ValueError(
            f"{directory}: metadata needs a `file_name` column and a caption column (text or caption); "
            f"got {list(rows[0])}."
        )
    records = []
    for row in rows:
        captions = row[column] if isinstance(row[column], list) else [row[column]]
        records.append({"image": str(directory / row["file_name"]), "text": captions[0], "references": captions})
    return keep_readable(records, str(directory))


def load_coco_json(path: str | Path, image_root: str | Path | None = None, split: str | None = None) -> list[dict]:
    r"""
    Load captions from COCO annotations (`images` + `annotations`) or the Karpathy split file (`images` with
    `sentences`, `split`, optional `filepath`). One record per image, all its captions kept as references.

    Args:
        path: the JSON file.
        image_root (*optional*): folder the file names are relative to; defaults to the JSON's folder.
        split (*optional*): Karpathy split to keep (`train`, `val`, `test`, `restval`).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    images = data.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected COCO or Karpathy caption JSON with an `images` list.")
    records = []
    if "annotations" in data:  # COCO: captions live in `annotations`, keyed by image id
        by_id: dict[Any, list[str]] = {}
        for annotation in data["annotations"]:
            by_id.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        for image in images:
            captions = by_id.get(image["id"], [])
            if captions:
                records.append({"image": str(root / image["file_name"]), "text": captions[0], "references": captions})
    else:  # Karpathy
        for image in images:
            if split is not None and image.get("split") != split:
                continue
            captions = [s["raw"].strip() for s in image.get("sentences", [])]
            file = root / image.get("filepath", "") / image["filename"]
            if captions:
                records.append({"image": str(file), "text": captions[0], "references": captions})
    return keep_readable(records, str(path))


def load_text_pairs(path: str | Path, source_key: str = "source", target_key: str = "target") -> list[dict]:
    r"""
    Load text-to-text pairs from JSONL, one `{"source": ..., "target": ...}` object per line.

    Args:
        path: the JSONL file.
        source_key / target_key: field names.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if source_key not in row or target_key not in row:
                raise ValueError(f"{path}:{number}: expected keys {source_key!r} and {target_key!r}, got {list(row)}.")
            records.append({"source": row[source_key], "text": row[target_key], "references": [row[target_key]]})
    return records


def from_hf_dataset(
    dataset: Iterable[dict], image_column: str = "image", text_column: str = "text", source_column: str | None = None
) -> list[dict]:
    r"""
    Records from any `datasets.Dataset` (or iterable of dicts).

    Args:
        dataset: rows with an image (or source text) column and a target text column.
        image_column: the image column (PIL images, paths, or `{"bytes", "path"}` dicts).
        text_column: the target column (a string, or a list of reference strings).
        source_column (*optional*): for text-to-text, the source text column (then `image_column` is ignored).
    """
    records = []
    for row in dataset:
        texts = row[text_column] if isinstance(row[text_column], list) else [row[text_column]]
        record = {"text": texts[0], "references": texts}
        if source_column is not None:
            record["source"] = row[source_column]
        else:
            record["image"] = row[image_column]
        records.append(record)
    return keep_readable(records, "dataset")


class SpliceCollator:
    r"""
    Builds a batch from records: encoder inputs (processor outputs), `labels` with -100 on padding and on prompt
    tokens, and, when records carry a decoder prompt, `decoder_input_ids` and `decoder_attention_mask`.

    Args:
        tokenizer: the decoder's tokenizer (targets end with its EOS; see `splice.builtin_data.train_tokenizer`).
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
