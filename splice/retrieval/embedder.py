"""Embedders: texts and images into one space, as L2-normalised float32 arrays `[N, D]`.

[`Embedder.from_pretrained`] wraps a CLIP-style dual encoder; [`Embedder.from_functions`] your own functions;
[`frozen_encoder_embedder`] a captioner's own frozen vision encoder (image keys without a CLIP model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data_io import open_image

TextFn = Callable[[list[str]], Any]
ImageFn = Callable[[list[Image.Image]], Any]
FROZEN_ENCODER_EMBEDDER = "splice:frozen-encoder-mean"


def _normalised(vectors: Any) -> np.ndarray:
    """float32 C-contiguous rows of unit length (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32)  # a copy, so the caller's array is never modified
    if vectors.ndim != 2:
        raise ValueError(f"Expected embeddings of shape [N, D], got shape {vectors.shape}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [N, 1]
    return vectors / np.maximum(norms, 1e-12)


class Embedder:
    r"""
    Embeds texts and images into one space, as L2-normalised float32 arrays `[N, D]`.

    Build it from a CLIP-style checkpoint with [`Embedder.from_pretrained`], or from your own functions with
    [`Embedder.from_functions`]. Its `identity` is saved with a datastore, so a datastore is never queried with
    embeddings from another space.

    Args:
        text_fn (`Callable[[list[str]], array]`): embeds a batch of texts, `[B, D]`.
        image_fn (`Callable[[list[PIL.Image.Image]], array]`, *optional*): embeds a batch of RGB images, `[B, D]`.
        identity (`dict`): JSON-serialisable description of the embedding space.
    """

    def __init__(self, text_fn: TextFn, image_fn: ImageFn | None, identity: dict[str, Any]):
        self.text_fn = text_fn
        self.image_fn = image_fn
        self.identity = json.loads(json.dumps(identity))  # as it will read back from datastore.json

    @classmethod
    def from_functions(cls, text_fn: TextFn, image_fn: ImageFn | None, identity: dict[str, Any]) -> Embedder:
        r"""
        An embedder from user functions (outputs are L2-normalised for you).

        Args:
            text_fn (`Callable[[list[str]], array]`): embeds a batch of texts, `[B, D]` (numpy array, CPU tensor or
                nested lists).
            image_fn (`Callable[[list[PIL.Image.Image]], array]` or `None`): embeds a batch of RGB images, `[B, D]`;
                `None` for a text-only embedder.
            identity (`dict`): names the embedding space, e.g. `{"name_or_path": "my-encoder-v2", "class": "mine",
                "dim": 512}`; a datastore built with it loads only with an embedder of equal identity.

        Returns:
            [`Embedder`]
        """
        return cls(text_fn, image_fn, identity)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None) -> Embedder:
        r"""
        A CLIP-style dual encoder: a checkpoint whose model has `get_text_features` and `get_image_features`
        (`CLIPModel`, `SiglipModel`, ...), with its tokenizer and image processor.

        Args:
            name_or_path (`str`): hub id or local directory (local paths are made absolute in the identity).
            device (`str`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.

        Returns:
            [`Embedder`]: identity `{"name_or_path", "class", "dim"}`.
        """
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModel.from_pretrained(name_or_path).to(device).eval()
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ValueError(
                f"The embedder {name_or_path!r} loads as {type(model).__name__}, which has no `get_text_features` / "
                "`get_image_features`: a datastore needs a CLIP-style dual encoder (CLIPModel, SiglipModel, ...)."
            )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        # SigLIP was trained on texts padded to the full length (its pooled output is the last position).
        padding = "max_length" if model.config.model_type.startswith("siglip") else True

        def pooled(output: Any) -> np.ndarray:
            # transformers >= 5.x returns a model output whose pooler_output is the projected embedding.
            features = output if isinstance(output, torch.Tensor) else output.pooler_output  # [B, D]
            return features.float().cpu().numpy()

        @torch.no_grad()
        def text_fn(texts: list[str]) -> np.ndarray:
            inputs = tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
            return pooled(model.get_text_features(**inputs.to(device)))

        @torch.no_grad()
        def image_fn(images: list[Image.Image]) -> np.ndarray:
            inputs = image_processor(images=images, return_tensors="pt").to(device)
            return pooled(model.get_image_features(**inputs))

        if os.path.isdir(name_or_path):
            name_or_path = os.path.abspath(name_or_path)
        dim = text_fn(["a"]).shape[1]
        return cls(text_fn, image_fn, {"name_or_path": name_or_path, "class": type(model).__name__, "dim": dim})

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        r"""
        Args:
            texts (`Sequence[str]`): the texts.
            batch_size (`int`, *optional*, defaults to 64): texts per call of the text tower.
            progress (`bool`, *optional*, defaults to `True`): show a progress bar.

        Returns:
            `np.ndarray`: float32 `[N, D]`, rows of unit length.
        """
        texts = list(texts)
        return self._embed(self.text_fn, texts, batch_size, "Embedding texts" if progress else None, list)

    def embed_images(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        r"""
        Args:
            images (`Sequence`): PIL images or anything [`splice.data.open_image`] reads (paths, bytes); files are
                opened one batch at a time.
            batch_size (`int`, *optional*, defaults to 32): images per call of the image tower.

        Returns:
            `np.ndarray`: float32 `[N, D]`, rows of unit length.
        """
        if self.image_fn is None:
            raise ValueError(f"The embedder {self.identity} has no image function.")
        images = list(images)
        return self._embed(self.image_fn, images, batch_size, "Embedding images", lambda b: [open_image(i) for i in b])

    def _embed(self, fn: Callable, items: list, batch_size: int, desc: str | None, prepare: Callable) -> np.ndarray:
        """`fn` over batches of `items`, with a progress bar named `desc` (none when `None`)."""
        chunks = [
            _normalised(fn(prepare(items[start : start + batch_size])))  # [B, D]
            for start in tqdm(range(0, len(items), batch_size), desc=desc, leave=False, disable=desc is None)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.identity.get("dim", 0)), np.float32)


def frozen_encoder_embedder(encoder: Any, image_processor: Any) -> Embedder:
    r"""
    Image keys from a captioner's own frozen encoder (the mean of its token states): retrieval without a CLIP model.

    Args:
        encoder: the frozen vision encoder.
        image_processor: its image processor.
    """

    @torch.no_grad()
    def embed(images: list) -> torch.Tensor:
        pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(encoder.device)
        states = encoder(pixel_values=pixels).last_hidden_state  # [B, S, E] or [B, E, H, W]
        return (states.mean(1) if states.dim() == 3 else states.mean((2, 3))).float().cpu()

    return Embedder.from_functions(None, embed, {"name_or_path": FROZEN_ENCODER_EMBEDDER})
