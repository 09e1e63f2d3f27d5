"""The onnxruntime backend of `splice serve`: a directory written by `splice export` (its manifest `splice_onnx.json`),
run by the torch-free runtime `splice_onnx` behind the same API as the PyTorch backend, with the same answers.

This module and the runtime import neither torch nor transformers. Per-token heatmaps need the attention weights,
which the exported graphs do not return: asked for, they are refused with a 400 that names the PyTorch model. An
exported SmallCap retrieves its prompts from the datastore copied into the export (or `--datastore`) when its keys
come from the captioner's own encoder, searched here with faiss and NumPy; without one, the no-retrieval prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backend import HeatmapUnsupported, Output, Settings

# The largest `max_new_tokens` a request may ask for, whatever the model's own limit (as the PyTorch backend).
MAX_NEW_TOKENS = 256
# `position_limit` (splice.conditioning.base) read from config.json, without transformers.
_POSITION_KEYS = ("n_positions", "max_position_embeddings", "max_target_positions", "n_ctx")
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "xmod",
                            "data2vec-text", "longformer", "ibert", "markuplm"}  # fmt: skip
# `splice.retrieval`'s name for keys that are the mean of the captioner's own encoder states.
FROZEN_ENCODER_EMBEDDER = "splice:frozen-encoder-mean"
_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def is_export(model_dir: Path) -> bool:
    """Whether `model_dir` was written by `splice export` (it holds the export manifest)."""
    from splice_onnx import MANIFEST

    return (Path(model_dir) / MANIFEST).is_file()


def decoder_position_limit(decoder: dict[str, Any]) -> int | None:
    """The decoder config's position limit (the start token included), `None` without a fixed one."""
    for key in _POSITION_KEYS:
        value = decoder.get(key)
        if isinstance(value, int) and value > 0:
            if decoder.get("model_type") in _POSITIONS_AFTER_PADDING:
                value -= (decoder.get("pad_token_id") or 1) + 1
            return max(value, 1)
    return None


class OnnxTokens:
    """Text and per-token pieces from ids with `tokenizers` alone, as `token_pieces` / `decode_predictions` give them
    with a transformers tokenizer: special tokens (the added tokens marked special) left out, spaces cleaned up when
    the tokenizer config says so."""

    def __init__(self, tokenizer: Any):
        self.runtime = tokenizer  # splice_onnx.processing.TextTokenizer
        self.special = {token.content for token in tokenizer.tokenizer.get_added_tokens_decoder().values()
                        if token.special}  # fmt: skip
        self.special_ids = {tokenizer.tokenizer.token_to_id(content) for content in self.special}
        config = tokenizer.config
        self.pad_token_id = self._id_of(config.get("pad_token"))

    def _id_of(self, token: Any) -> int | None:
        content = token.get("content") if isinstance(token, dict) else token
        return self.runtime.tokenizer.token_to_id(content) if isinstance(content, str) else None

    def _decode(self, ids: list[int]) -> str:
        from splice_onnx.processing import _clean_up

        text = self.runtime.tokenizer.decode(ids, skip_special_tokens=True)
        return _clean_up(text) if self.runtime.config.get("clean_up_tokenization_spaces") else text

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The text each kept (non-special) token adds to the decoded text (`torch_backend.token_pieces`)."""
        kept = [int(i) for i in ids if int(i) not in self.special_ids and int(i) >= 0]
        pieces, before = [], ""
        for end in range(1, len(kept) + 1):
            text = self._decode(kept[:end])
            pieces.append(text[len(before) :] if text.startswith(before) else text)
            before = text
        return pieces

    def text(self, ids: Sequence[int]) -> str:
        return self._decode([int(i) for i in ids if int(i) >= 0]).strip()


class OnnxRetrieval:
    r"""
    SmallCap's datastore searched without torch, as `Datastore.retrieve_for_images` does it: the image's key is the
    mean of the export's own encoder states (a datastore built with `frozen_encoder_embedder`), scores are inner
    products of L2-normalised keys rounded to 1e-5, nearest first then by key, identical captions kept once.

    Args:
        directory: the datastore (`index.faiss`, `captions.jsonl`, `datastore.json`).
    """

    def __init__(self, directory: Path):
        import faiss  # the `train` extra's faiss-cpu; no torch

        meta_path = directory / "datastore.json"
        if not meta_path.is_file():
            raise ValueError(f"datastore={str(directory)!r}: no datastore.json there; pass a `splice datastore` output")
        meta = json.loads(meta_path.read_text())
        embedder = meta.get("embedder", {}).get("name_or_path")
        if embedder != FROZEN_ENCODER_EMBEDDER:
            raise ValueError(
                f"datastore={str(directory)!r}: its keys come from {embedder!r}, a PyTorch model the ONNX runtime does "
                f"not run; serve the PyTorch model, or build the datastore with the captioner's own encoder "
                f"({FROZEN_ENCODER_EMBEDDER!r})"
            )
        index = faiss.read_index(str(directory / "index.faiss"))
        self.keys = index.reconstruct_n(0, index.ntotal)  # [N, D], unit rows
        with open(directory / "captions.jsonl", encoding="utf-8") as file:
            self.captions = [json.loads(line)["caption"] for line in file if line.strip()]

    def retrieve(self, states: np.ndarray, k: int) -> list[list[str]]:
        """Up to `k` distinct captions per image, nearest first, from the encoder states `[B, S, E]`."""
        queries = states.mean(1).astype(np.float32)
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        scores = (queries @ self.keys.T).round(5)  # [B, N]
        keys = np.arange(len(self.captions))
        results = []
        for row in scores:
            hits: list[str] = []
            for i in np.lexsort((keys, -row)):
                if len(hits) == k:
                    break
                if self.captions[i] not in hits:
                    hits.append(self.captions[i])
            results.append(hits)
        return results


class OnnxBackend:
    r"""
    Serves a `splice export` directory with onnxruntime (no torch).

    Args:
        model: the loaded export (`splice_onnx.OnnxSeq2Seq`).
        name: the name shown in responses.
        device: `"cpu"` or `"cuda"` (onnxruntime's CUDA provider).
    """

    def __init__(self, model: Any, name: str, device: str = "cpu", datastore: OnnxRetrieval | None = None):
        self.model = model
        self.name = name
        self.device = device
        main = model.main_input_name
        if main not in ("pixel_values", "input_ids"):
            raise ValueError(
                f"model_dir={str(model.directory)!r}: a {main!r} encoder; `splice serve` serves image (pixel_values) "
                "and text (input_ids) encoders; run this export with `splice_onnx.OnnxSeq2Seq.generate` instead"
            )
        self.task = "caption" if main == "pixel_values" else "generate"
        self.tokens = OnnxTokens(model.tokenizer)
        self.image_processor = model.image_processor if self.task == "caption" else None
        limit = decoder_position_limit(model.config.get("decoder", {}))
        self.max_new_tokens = min(MAX_NEW_TOKENS, limit - 1) if limit else MAX_NEW_TOKENS
        # SmallCap: prompts from the datastore's captions (without one: the no-retrieval prompt)
        self.prompt_settings: dict[str, Any] | None = model.manifest.get("decoder_prompt")
        self.datastore = datastore

    @classmethod
    def from_directory(cls, model_dir: Path, device: str = "cpu", datastore: str | None = None) -> OnnxBackend:
        """Load the export at `model_dir` on onnxruntime's provider for `device`."""
        from splice_onnx import OnnxSeq2Seq

        if device not in _PROVIDERS:
            raise ValueError(f"device={device!r}: use 'cpu' or 'cuda'")
        if device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    "--device cuda: this onnxruntime has no CUDAExecutionProvider (it offers "
                    f"{ort.get_available_providers()}); pip install onnxruntime-gpu, or serve with --device cpu"
                )
        model = OnnxSeq2Seq.from_pretrained(model_dir, providers=_PROVIDERS[device])
        prompt = model.manifest.get("decoder_prompt")
        store = None
        if prompt is None and datastore:
            raise ValueError(f"--datastore {datastore!r}: the model is not retrieval-augmented (SmallCap)")
        if prompt is not None:
            store_dir = Path(datastore) if datastore else Path(model_dir) / prompt.get("datastore", "datastore")
            if store_dir.is_dir():
                store = OnnxRetrieval(store_dir)
            elif datastore:
                raise ValueError(f"--datastore {datastore!r}: no such directory")
        return cls(model, Path(model_dir).resolve().name, device, store)

    def heatmap_problem(self, settings: Settings) -> str | None:
        if not settings.heatmap:
            return None
        return (
            f"heatmap=true needs the PyTorch model: {self.name} is an ONNX export (onnxruntime), whose graphs return "
            "no attention weights; serve the model directory `splice export` was run on to get heatmaps"
        )

    def _prompts(self, feed: dict[str, np.ndarray]) -> list[str]:
        batch = len(feed["pixel_values"])
        if self.datastore is None:
            return [self.prompt_settings["no_retrieval"]] * batch
        retrieved = self.datastore.retrieve(self.model.encode(feed), self.prompt_settings["k"])
        from splice_onnx.model import smallcap_prompt

        return [smallcap_prompt(captions, self.prompt_settings) for captions in retrieved]

    def _kwargs(self, settings: Settings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_beams": settings.num_beams}
        if settings.max_new_tokens is not None:
            kwargs["max_new_tokens"] = settings.max_new_tokens
        return kwargs

    def run(self, inputs: Sequence[Any], settings: Settings) -> list[Output]:
        problem = self.heatmap_problem(settings)
        if problem:
            raise HeatmapUnsupported(problem)
        if self.task == "caption":
            feed = {"pixel_values": self.image_processor(list(inputs))}
        else:
            pad = self.tokens.pad_token_id if self.tokens.pad_token_id is not None else 0
            feed = self.model.tokenizer.encode(list(inputs), pad)
        if self.prompt_settings is not None:
            feed.update(self.model.encode_prompts(self._prompts(feed)))
        count = settings.num_beams if settings.return_beams else 1
        kwargs = self._kwargs(settings) | ({"num_return_sequences": count} if count > 1 else {})
        generated = self.model.generate(feed, **kwargs)
        sequences = generated[::count]  # the best beam of each input (the beams come best first)
        # As the PyTorch backend: captions after the prompt (or the decoder start token), generations whole.
        start = feed["decoder_input_ids"].shape[1] if self.prompt_settings is not None else 0
        first = start or (1 if self.task == "caption" else 0)
        outputs = [Output(self.tokens.text(row[start:]), self.tokens.pieces(row[first:].tolist())) for row in sequences]
        if count > 1:  # the runtime returns no beam scores
            texts = [self.tokens.text(row[start:]) for row in generated]
            for index, output in enumerate(outputs):
                output.beams = [(text, None) for text in texts[index * count : (index + 1) * count]]
        return outputs
