"""One-call inference: images or texts in, strings out — the one implementation behind `model.caption`,
`model.transform`, SmallCap's prompted captions, `splice caption` and evaluation over records.

Works on any model with `generate` and a `config` (it imports no model class): the model methods delegate here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .data_io import open_image
from .processing import SpliceProcessor, decode_predictions


def load_processor(model: Any) -> Any:
    """The processor saved in the model's directory: a `SpliceProcessor` (image encoders) or the tokenizer (text)."""
    from transformers import AutoTokenizer

    path = model.config.name_or_path
    loader = SpliceProcessor if model.main_input_name == "pixel_values" else AutoTokenizer
    try:
        return loader.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"No processor is saved with this model (looked in {path!r}). Pass `processor=` or assign "
            "`model.processor` (a `SpliceProcessor(image_processor, tokenizer)` or, for text, a tokenizer)."
        ) from error


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], start_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start token + prompt ids, left-padded: `decoder_input_ids` and `decoder_attention_mask` `[B, P]`."""
    rows = [[start_token_id] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # [B, P]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, P]
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def start_tokens(model: Any, batch_size: int) -> dict[str, torch.Tensor]:
    """`decoder_input_ids` (the start token) and its `decoder_attention_mask`, which `generate` extends step by step.

    Without a mask, a decoder such as GPT-2 warns on every call ("We strongly recommend passing in an
    `attention_mask`") once its input holds its pad id: a finished row's padding, or a start token equal to the pad
    token. The ids are those `generate` would start from; nothing to pass when no start token is set.
    """
    start = getattr(model.generation_config, "decoder_start_token_id", None)
    if not isinstance(start, int):
        return {}
    ids = torch.full((batch_size, 1), start, dtype=torch.long, device=model.device)
    return {"decoder_input_ids": ids, "decoder_attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def caption(
    model: Any,
    images: Any,
    processor: Any,
    prompts: Sequence[str] | None = None,
    generate: Callable[..., Any] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    r"""
    Generate text for images in one call.

    Args:
        model: a vision composite.
        images: a PIL image or a list of them (anything the image processor accepts).
        processor (`SpliceProcessor`): image processor and tokenizer.
        prompts (*optional*): one decoder prompt per image (left-padded in one batch; stripped from the output).
        generate (*optional*): what generates, `model.generate` by default (`CompiledDecoding(model).generate`: the
            compiled decoding step).
        generate_kwargs: passed to `generate` (e.g. `num_beams`, `max_new_tokens`).
    """
    generate = generate or model.generate
    pixel_values = processor(images=images)["pixel_values"].to(model.device, model.dtype)
    if prompts is None:
        kwargs = {} if "decoder_input_ids" in generate_kwargs else start_tokens(model, len(pixel_values))
        kwargs = kwargs | generate_kwargs
        return decode_predictions(processor.tokenizer, generate(pixel_values, **kwargs))
    config = model.config
    prompt_ids, prompt_mask = encode_prompts(
        processor.tokenizer, prompts, config.decoder_start_token_id, config.pad_token_id
    )
    ids = generate(
        pixel_values,
        decoder_input_ids=prompt_ids.to(model.device),
        decoder_attention_mask=prompt_mask.to(model.device),
        **generate_kwargs,
    )
    return decode_predictions(processor.tokenizer, ids[:, prompt_ids.shape[1] :])


@torch.no_grad()
def transform(model: Any, texts: str | Sequence[str], tokenizer: Any, **generate_kwargs: Any) -> list[str]:
    """Generate text from source texts in one call (text encoders: summarisation, translation, ...)."""
    inputs = tokenizer([texts] if isinstance(texts, str) else list(texts), padding=True, return_tensors="pt")
    kwargs = {} if "decoder_input_ids" in generate_kwargs else start_tokens(model, len(inputs["input_ids"]))
    kwargs = kwargs | generate_kwargs
    return decode_predictions(tokenizer, model.generate(**inputs.to(model.device), **kwargs))


@torch.no_grad()
def generate_for_records(
    model: Any,
    records: Sequence[dict],
    tokenizer: Any,
    image_processor: Any = None,
    batch_size: int = 32,
    progress: Callable[[range], Any] | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Generate for each record in batches: `{"image": ...}` (with `"retrieved"` captions for SmallCap-style models,
    which build their prompts) or `{"source": text}`.

    Args:
        progress (*optional*): wraps the range of batch starts (e.g. `tqdm`).
    """
    model.eval()
    starts = range(0, len(records), batch_size)
    texts: list[str] = []
    for start in progress(starts) if progress is not None else starts:
        chunk = records[start : start + batch_size]
        if image_processor is None:
            texts.extend(transform(model, [r["source"] for r in chunk], tokenizer, **generate_kwargs))
            continue
        images = [open_image(r["image"]) for r in chunk]
        processor = SpliceProcessor(image_processor, tokenizer)
        prompts = model.prompts([r["retrieved"] for r in chunk], len(chunk)) if "retrieved" in chunk[0] else None
        texts.extend(caption(model, images, processor, prompts, **generate_kwargs))
    return texts
