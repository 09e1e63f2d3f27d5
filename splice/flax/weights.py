"""Checkpoint files ↔ parameter trees: transformers' safetensors format, same keys, strict about what does not fit.

A parameter's dotted path in the NNX module tree is its checkpoint key (`splice.flax.nn`), so reading is matching
keys; what a family's checkpoints may hold beyond its parameters is data in `families.ALIASES`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from .families import ALIASES

WEIGHTS_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested parameter dict → `{"encoder.embeddings.cls_token": array, ...}` (list indices become `.0.`)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: dict[str, Any], template: dict) -> dict:
    """The inverse of `flatten`, shaped like `template` (whose keys say which levels are list indices)."""
    out: dict = {}
    for key, sub in template.items():
        if isinstance(sub, dict):
            out[key] = unflatten({k[len(f"{key}.") :]: v for k, v in flat.items() if k.startswith(f"{key}.")}, sub)
        else:
            out[key] = flat[str(key)]
    return out


def resolve_file(path: str, **hub_kwargs: Any) -> list[Path]:
    """The safetensors file(s) of a checkpoint: a local directory or a hub id (fetched with `huggingface_hub`)."""
    local = Path(str(path))
    if local.is_dir():
        if (local / WEIGHTS_NAME).is_file():
            return [local / WEIGHTS_NAME]
        if (local / INDEX_NAME).is_file():
            shards = sorted(set(json.loads((local / INDEX_NAME).read_text())["weight_map"].values()))
            return [local / shard for shard in shards]
        raise OSError(
            f"{str(path)!r} holds no {WEIGHTS_NAME} (nor {INDEX_NAME}); splice's JAX/TF classes read safetensors "
            "checkpoints (convert a .bin one with the PyTorch class: `from_pretrained(path).save_pretrained(new)`)."
        )
    from transformers.utils import cached_file

    try:
        return [Path(cached_file(path, WEIGHTS_NAME, **hub_kwargs))]
    except OSError:
        index = Path(cached_file(path, INDEX_NAME, **hub_kwargs))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [Path(cached_file(path, shard, **hub_kwargs)) for shard in shards]


def read_checkpoint(path: str, **hub_kwargs: Any) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint, as numpy arrays keyed by their checkpoint names."""
    tensors: dict[str, np.ndarray] = {}
    for file in resolve_file(path, **hub_kwargs):
        tensors.update(load_file(str(file)))
    return tensors


def write_checkpoint(flat: dict[str, Any], directory: str | Path) -> None:
    """Write `model.safetensors` as transformers' PyTorch classes do (float32 unless the arrays say otherwise)."""
    arrays = {key: np.ascontiguousarray(np.asarray(value)) for key, value in flat.items()}
    save_file(arrays, str(Path(directory) / WEIGHTS_NAME), metadata={"format": "pt"})


def _is_alias(key: str, model_type: str) -> bool:
    return any(re.search(pattern, key) for pattern in ALIASES.get(model_type, ()))


def match_composite(expected: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray], config: Any, source: str):
    """Match a composite checkpoint (`encoder.*`, `decoder.*`, `enc_to_dec_proj.*`) to the expected keys, strictly."""
    types = {"encoder": config.encoder.model_type, "decoder": config.decoder.model_type}

    def alias(key: str) -> bool:
        role, _, rest = key.partition(".")
        return role in types and _is_alias(rest, types[role])

    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected and not alias(k)]
    _check_complete(missing, extra, source)
    return {k: _shaped(k, tensors[k], expected[k], source) for k in expected}


def _check_complete(missing: list[str], extra: list[str], source: str) -> None:
    if missing or extra:
        raise ValueError(
            f"The checkpoint {source!r} does not fit the model built from its config: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}. "
            "Check that the config (model types, sizes, tie_word_embeddings) is the checkpoint's own."
        )


def _shaped(key: str, array: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{key!r} in {source!r} has shape {tuple(array.shape)}; the model expects {tuple(shape)}.")
    return array
