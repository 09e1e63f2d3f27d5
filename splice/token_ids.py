"""One source of truth for the decoder's special tokens.

Precedence, first set wins: an explicit argument → the composite config → the generation config → the decoder config
→ the tokenizer (when one is given). Then two conventions fill what is still unset:
`decoder_start_token_id` falls back to `bos_token_id` (GPT-2, Llama: generation starts after BOS) and `pad_token_id`
falls back to the first `eos_token_id` (decoders trained without padding: padded positions are masked out anyway).
Every resolved id must lie in `[0, vocab_size)`; anything else is a `ValueError` naming the field, the value and the
vocabulary size, raised when the model is built and again before `generate`, never an `IndexError` deep inside it.
"""

from __future__ import annotations

from typing import Any

# Ordered so that a bad id is reported at its root: bos/eos before the fields that fall back to them.
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "decoder_start_token_id", "pad_token_id")

# Where a tokenizer keeps each of our fields.
_TOKENIZER_ATTRS = {
    "decoder_start_token_id": ("bos_token_id", "cls_token_id"),
    "pad_token_id": ("pad_token_id",),
    "eos_token_id": ("eos_token_id", "sep_token_id"),
    "bos_token_id": ("bos_token_id", "cls_token_id"),
}


def resolve_special_tokens(
    config: Any, generation_config: Any = None, tokenizer: Any = None, **explicit: int | list[int] | None
) -> dict[str, Any]:
    r"""
    Resolve the four special-token ids of a composite model.

    Args:
        config (`SpliceConfig`): the composite config (its `decoder` sub-config is consulted too).
        generation_config (`GenerationConfig`, *optional*): the model's generation config.
        tokenizer (*optional*): a tokenizer whose special tokens fill what nothing else sets.
        explicit: ids given by the caller, highest precedence.

    Returns:
        `dict` with a key per field, and `"_source"` mapping each field to where its value came from.
    """
    sources: list[tuple[str, Any]] = [("argument", None), ("config", config), ("generation config", generation_config)]
    sources.append(("decoder config", config.decoder))
    resolved: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for field in SPECIAL_TOKENS:
        for name, source in sources:
            value = explicit.get(field) if source is None else getattr(source, field, None)
            if value is not None:
                resolved[field], origin[field] = value, name
                break
        else:
            if tokenizer is not None:
                for attr in _TOKENIZER_ATTRS[field]:
                    value = getattr(tokenizer, attr, None)
                    if value is not None:
                        resolved[field], origin[field] = value, f"tokenizer.{attr}"
                        break
    if resolved.get("decoder_start_token_id") is None and resolved.get("bos_token_id") is not None:
        resolved["decoder_start_token_id"] = resolved["bos_token_id"]
        origin["decoder_start_token_id"] = f"bos_token_id ({origin['bos_token_id']})"
    if resolved.get("pad_token_id") is None and resolved.get("eos_token_id") is not None:
        eos = resolved["eos_token_id"]
        resolved["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
        origin["pad_token_id"] = f"eos_token_id ({origin['eos_token_id']})"
    out = {field: resolved.get(field) for field in SPECIAL_TOKENS}
    out["_source"] = origin
    return out


def validate_token_ids(values: dict[str, Any], vocab_size: int, origin: dict[str, str] | None = None) -> None:
    r"""
    Raise `ValueError` for any special-token id outside `[0, vocab_size)`.

    Args:
        values: field name → id (or list of ids, or `None`).
        vocab_size: the decoder's vocabulary size.
        origin: field name → where the value came from, quoted in the message.
    """
    origin = origin or {}
    for field, value in values.items():
        if field.startswith("_") or value is None:
            continue
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
                where = f" (from the {origin[field]})" if field in origin else ""
                raise ValueError(
                    f"{field}={value!r}{where} is outside the decoder vocabulary [0, {vocab_size}). "
                    f"Set a valid id: pass `{field}=...` to the model config (or `from_encoder_decoder_pretrained`), "
                    f"or set `model.generation_config.{field}`; if the tokenizer grew, call "
                    "`model.resize_token_embeddings(len(tokenizer))`."
                )
