"""The table of JAX families: which module builds each `model_type`, and the checkpoint names that are not parameters.

Parameters are named exactly as in transformers' safetensors checkpoints (see `splice.flax.nn`), so the weight-name
map of a family is its module attribute names plus the entries here. Adding a family: one file with its module (an
encoder has `encode(inputs, attention_mask, rngs, dtype)`; a decoder has `decode(...)` and `cross_kv(...)`, see
`gpt2.py`), and one row in each table below.
"""

from __future__ import annotations

from typing import Any

from . import bert, gpt2, vit

# model_type → the encoder module (its parameters sit directly under the composite's `encoder.`).
ENCODERS = {"vit": vit.ViTEncoder, "deit": vit.ViTEncoder, "bert": bert.encoder, "roberta": bert.encoder}
# model_type → the decoder module with cross-attention (parameters under `decoder.`).
DECODERS = {"gpt2": gpt2.GPT2Decoder, "bert": bert.BertDecoder, "roberta": bert.BertDecoder}
# Checkpoint keys (regular expressions, searched in the key) that are aliases of tied parameters or old buffers:
# accepted in a checkpoint, never parameters here, never written.
ALIASES = {
    "gpt2": (r"^lm_head\.weight$", r"\.attn\.(masked_)?bias$"),
    "bert": (r"^cls\.predictions\.decoder\.(weight|bias)$", r"position_ids$"),
    "roberta": (r"^lm_head\.decoder\.(weight|bias)$", r"position_ids$"),
    "vit": (),
    "deit": (),
}


def family(role: str, config: Any) -> Any:
    """The module class (or builder) for the `role` ("encoder"/"decoder") of `config`, or a `ValueError`."""
    table = ENCODERS if role == "encoder" else DECODERS
    if config.model_type not in table:
        raise ValueError(
            f"The {role} model_type={config.model_type!r} has no JAX implementation in splice (JAX {role}s: "
            f"{sorted(table)}). Use the PyTorch classes (`splice.VisionEncoderDecoderModel`, ...) for it, or add it: "
            "see `splice/flax/families/__init__.py`."
        )
    return table[config.model_type]
