"""The PyTorch backend of `splice serve`: any splice composite saved with its processor (vision) or tokenizer (text),
SmallCap with its retrieval datastore, and per-token attention maps for each conditioning: the decoder's own
cross-attention (native), splice's injected blocks, or the decoder's self-attention to the prefix tokens (prefix).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..conditioning.base import position_limit
from ..inference import encode_prompts
from ..models.compiled_step import CompiledDecoding
from ..precision import apply_precision
from ..processing import decode_predictions
from .backend import HeatmapUnsupported, Output, Settings

# The largest `max_new_tokens` a request may ask for, whatever the model's own limit.
MAX_NEW_TOKENS = 256


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each kept (non-special) token adds to the decoded text: their concatenation, stripped, is the text."""
    special = set(tokenizer.all_special_ids)
    kept = [int(i) for i in ids if int(i) not in special and int(i) >= 0]
    pieces, before = [], ""
    for end in range(1, len(kept) + 1):
        text = tokenizer.decode(kept[:end], skip_special_tokens=True)
        pieces.append(text[len(before) :] if text.startswith(before) else text)
        before = text
    return pieces


def grid_of(num_states: int) -> tuple[int, int] | None:
    """`(skip, side)`: encoder states that are a square patch grid after `skip` leading tokens (CLS, distillation)."""
    for skip in (0, 1, 2):
        side = math.isqrt(max(num_states - skip, 0))
        if side > 1 and side * side == num_states - skip:
            return skip, side
    return None


class TorchBackend:
    r"""
    Serves a splice composite with PyTorch.

    Args:
        model: a splice model (`eval()` mode), on `device`.
        processor: its `SpliceProcessor` (vision) or tokenizer (text).
        name: the name shown in responses.
        datastore (*optional*): SmallCap: the retrieval datastore prompts come from (without one: the no-retrieval
            prompt).
        compile (`bool`): generate through a compiled decoding step (`splice.CompiledDecoding`, same outputs; beam
            search decodes eagerly); `from_directory` then warms it up before the first request.
    """

    def __init__(self, model: Any, processor: Any, name: str, datastore: Any = None, compile: bool = False):
        self.model = model
        # What generates: the model's own `generate`, or the compiled step's (its lines about compiling on stderr).
        self.generate = CompiledDecoding(model, file=sys.stderr).generate if compile else model.generate
        self.processor = processor
        self.name = name
        self.device = str(model.device)
        self.datastore = datastore
        self.task = "caption" if model.main_input_name == "pixel_values" else "generate"
        self.tokenizer = processor.tokenizer if self.task == "caption" else processor
        limit = position_limit(model.config.decoder)  # the decoder's positions, the start token included
        self.max_new_tokens = min(MAX_NEW_TOKENS, limit - 1) if limit else MAX_NEW_TOKENS
        self._grid = self._find_grid() if self.task == "caption" and self._mapped else None

    @classmethod
    def from_directory(
        cls,
        model_dir: Path,
        device: str = "cpu",
        datastore: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        compile: bool = False,
    ) -> TorchBackend:
        """Load the model, its processor and (SmallCap) the datastore saved with it or at `datastore`; `dtype` and
        `quantize` as `splice caption`'s (`splice.precision.apply_precision`); `compile`: a compiled decoding step,
        warmed up here (one input at the default settings) so that the first request does not wait for it."""
        from transformers import AutoTokenizer

        from ..processing import SpliceProcessor
        from ..registry import model_class

        config_file = model_dir / "config.json"
        if not config_file.is_file():
            raise ValueError(f"model_dir={str(model_dir)!r} has no config.json; pass the output_dir of `splice train`")
        model_type = json.loads(config_file.read_text())["model_type"]
        model = apply_precision(model_class(model_type).from_pretrained(model_dir).to(device).eval(), dtype, quantize)
        if model.main_input_name not in ("pixel_values", "input_ids"):
            raise ValueError(
                f"model_dir={str(model_dir)!r}: a {model.main_input_name!r} encoder; `splice serve` serves image "
                "(pixel_values) and text (input_ids) encoders"
            )
        processor = (SpliceProcessor if model.main_input_name == "pixel_values" else AutoTokenizer).from_pretrained(
            model_dir
        )
        store = None
        if hasattr(model, "prompts"):  # SmallCap: retrieval prompts
            store_dir = Path(datastore) if datastore else model_dir / "datastore"
            if store_dir.is_dir():
                from ..retrieval import load_datastore_for

                store = load_datastore_for(store_dir, model, processor.image_processor)
            elif datastore:
                raise ValueError(f"--datastore {datastore!r}: no such directory")
        elif datastore:
            raise ValueError(f"--datastore {datastore!r}: the model is not retrieval-augmented (SmallCap)")
        backend = cls(model, processor, model_dir.resolve().name, store, compile=compile)
        if compile:
            backend.run([Image.new("RGB", (32, 32))] if backend.task == "caption" else ["warm-up"], Settings())
        return backend

    @property
    def _mode(self) -> str:
        return getattr(self.model.config, "conditioning", "native")

    @property
    def _mapped(self) -> bool:
        """Modes whose per-token attention this backend maps: the decoder's own cross-attention, splice's injected
        blocks, or the decoder's self-attention to the prefix tokens."""
        return self._mode in ("native", "injected", "prefix")

    def _prefix_problem(self) -> str | None:
        """Why attention to this model's prefix tokens is not a map of the image (a resampler's learned queries)."""
        if self._mode != "prefix" or getattr(self.model.config, "prefix_length", None) is None:
            return None
        config = self.model.config
        if config.prefix_reducer == "pool":
            return None  # each pooled token averages a run of states: its attention spreads back over them
        return (
            f"heatmap=true with conditioning='prefix' maps attention to the prefix tokens onto the patches they come "
            f"from; this model reduces the encoder states to prefix_length={config.prefix_length} tokens with "
            f"prefix_reducer={config.prefix_reducer!r} (learned queries over the whole image), so its attention is not "
            "a spatial map: heatmaps need prefix_length=None (one prefix token per patch) or prefix_reducer='pool'"
        )

    def _find_grid(self) -> tuple[int, int] | None:
        from PIL import Image

        pixels = self.processor(images=[Image.new("RGB", (64, 64))])["pixel_values"].to(self.device, self.model.dtype)
        with torch.no_grad():
            states = self.model.encoder(pixel_values=pixels).last_hidden_state
        return grid_of(states.shape[1]) if states.dim() == 3 else None

    def heatmap_problem(self, settings: Settings) -> str | None:
        if not settings.heatmap:
            return None
        if self.task != "caption":
            return "heatmap=true needs an image model; this model generates from text"
        if not self._mapped:
            return (
                f"heatmap=true needs conditioning='native' (the decoder's own cross-attention), 'injected' or "
                f"'prefix'; this model uses {self._mode!r}, which has no per-token attention map in this server yet"
            )
        if self._prefix_problem():
            return self._prefix_problem()
        if self._grid is None:
            return "heatmap=true needs an encoder whose states are a square patch grid (ViT-like); this one is not"
        return None

    def _kwargs(self, settings: Settings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"num_beams": settings.num_beams}
        if settings.max_new_tokens is not None:
            kwargs["max_new_tokens"] = settings.max_new_tokens
        return kwargs

    @torch.no_grad()
    def run(self, inputs: Sequence[Any], settings: Settings) -> list[Output]:
        if self.task == "generate":
            return self._generate(inputs, settings)
        problem = self.heatmap_problem(settings)
        if problem:
            raise HeatmapUnsupported(problem)
        images = list(inputs)
        pixels = self.processor(images=images)["pixel_values"].to(self.device, self.model.dtype)
        prompt: dict[str, torch.Tensor] = {}
        if hasattr(self.model, "prompts"):  # SmallCap: left-padded prompts; positions count real tokens
            retrieved = None
            if self.datastore is not None:
                retrieved = self.datastore.retrieve_for_images(images, k=self.model.config.retrieval_k)
            config = self.model.config
            ids, mask = encode_prompts(
                self.tokenizer, self.model.prompts(retrieved, len(images)), config.decoder_start_token_id,
                config.pad_token_id,
            )  # fmt: skip
            prompt = {"decoder_input_ids": ids.to(self.device), "decoder_attention_mask": mask.to(self.device)}
        kwargs = self._kwargs(settings)
        count = settings.num_beams if settings.return_beams else 1
        if count > 1:  # every beam, best first, with its score (the best beam is the one returned alone)
            kwargs.update(num_return_sequences=count, output_scores=True, return_dict_in_generate=True)
        generated = self.generate(pixels, **prompt, **kwargs)
        start = prompt["decoder_input_ids"].shape[1] if prompt else 0
        beams = None
        if count > 1:
            texts = decode_predictions(self.tokenizer, generated.sequences[:, start:])
            scores = [round(float(score), 4) for score in generated.sequences_scores]
            beams = [list(zip(texts[i : i + count], scores[i : i + count])) for i in range(0, len(texts), count)]
            sequences = generated.sequences[::count]  # the best beams (padded to the longest beam: pad is skipped)
        else:
            sequences = generated
        texts = decode_predictions(self.tokenizer, sequences[:, start:])
        first = start or 1  # the first generated position (after the prompt, or after the decoder start token)
        outputs = [Output(t, token_pieces(self.tokenizer, row.tolist())) for t, row in zip(texts, sequences[:, first:])]
        for output, row_beams in zip(outputs, beams or []):
            output.beams = row_beams
        if settings.heatmap:
            for output, maps in zip(outputs, self._attention(pixels, sequences, prompt, first)):
                output.attention = maps
        return outputs

    def _generate(self, texts: Sequence[str], settings: Settings) -> list[Output]:
        inputs = self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        sequences = self.generate(**inputs, **self._kwargs(settings))
        texts = decode_predictions(self.tokenizer, sequences)
        return [Output(t, token_pieces(self.tokenizer, row.tolist())) for t, row in zip(texts, sequences)]

    def _attention(
        self, pixels: torch.Tensor, sequences: torch.Tensor, prompt: dict[str, torch.Tensor], first: int
    ) -> list[list[Any]]:
        """Per row, per kept generated token: cross-attention of the step that produced it, averaged over heads and
        layers, on the patch grid, scaled to [0, 1]. One teacher-forced forward over the generated rows: attention is
        causal, so position t's weights are those of the decoding step that produced token t + 1, for greedy rows and
        for the best beam alike (a beam's weights at each step are those of its own prefix of tokens)."""
        skip, side = self._grid
        mask = torch.ones_like(sequences)
        if prompt:
            mask[:, :first] = prompt["decoder_attention_mask"]
        extra = {}
        if prompt and self.model._decoder_takes_position_ids:
            extra["decoder_position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"pixel_values": pixels, "decoder_input_ids": sequences, "decoder_attention_mask": mask, **extra}
        if self._mode == "injected":
            attention = injected_attention(self.model, inputs)
        elif self._mode == "prefix":
            attention = prefix_attention(self.model, inputs)
        else:
            out = eager_forward(self.model, inputs)
            attention = torch.stack([layer.float() for layer in out.cross_attentions]).mean((0, 2))  # [B, T, S]
        special = set(self.tokenizer.all_special_ids)
        maps = []
        for row, ids in enumerate(sequences.tolist()):
            grids = []
            for position in range(first, len(ids)):
                if ids[position] in special or ids[position] < 0:
                    continue
                grid = attention[row, position - 1, skip : skip + side * side].reshape(side, side)
                grids.append((grid / grid.max().clamp(min=1e-12)).tolist())
            maps.append(grids)
        return maps


def eager_forward(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    """`model(**inputs)` returning the decoder's attention weights (not the encoder's), its attention in eager form
    for the call (only eager attention returns its weights)."""
    decoder = model.decoder
    before = decoder.config._attn_implementation
    decoder.set_attn_implementation("eager")
    try:
        return model(**inputs, decoder_output_attentions=True)
    finally:
        decoder.set_attn_implementation(before)


def prefix_attention(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Prefix conditioning: the decoder's self-attention from each text position to the prefix tokens, averaged over
    heads and layers, as attention to the encoder states: `[B, T, S]`. Unreduced, prefix token i is encoder state i
    (no padding: image encoders); pooled (`prefix_reducer='pool'`), a token's attention spreads evenly over the states
    its bin averages."""
    from ..conditioning.prefix import PROJECTOR, pooling_weights

    out = eager_forward(model, inputs)
    full = torch.stack([layer.float() for layer in out.decoder_attentions]).mean((0, 2))  # [B, P+T, P+T]
    num_states = out.encoder_last_hidden_state.shape[1]
    prefix_length = getattr(model, PROJECTOR).output_length(num_states)
    attention = full[:, prefix_length:, :prefix_length]  # [B, T, P]: text positions to prefix tokens
    if prefix_length != num_states:  # pooled: bin i averages its run of states
        bins = pooling_weights(attention.new_ones(attention.shape[0], num_states), prefix_length)  # [B, P, S]
        attention = attention @ bins  # each row of `bins` sums to 1: a bin's share splits evenly over its states
    return attention


def injected_attention(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The attention weights of splice's injected cross-attention blocks in one forward, averaged over heads and
    layers: `[B, T, S]`. The blocks compute them inside scaled-dot-product attention and return none, so a hook on
    each recomputes them from the block's own projections (the same query, keys, scale and mask)."""
    from ..conditioning.injected import cross_attention_layers

    maps: list[torch.Tensor] = []

    def hook(block: Any, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        key_values = kwargs.get("key_values")
        if key_values is None:
            states = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
            key_values = block.project_key_values(states)
        dtype = block.q_proj.weight.dtype
        query = block._split_heads(block.q_proj(block.norm(hidden.to(dtype))))  # [B, H, T, hd]
        scores = query.float() @ key_values[0].float().transpose(-1, -2) / math.sqrt(query.shape[-1])  # [B, H, T, S]
        source_mask = kwargs.get("encoder_attention_mask", args[2] if len(args) > 2 else None)
        if source_mask is not None:
            scores = scores.masked_fill(~source_mask.bool()[:, None, None, :], float("-inf"))
        maps.append(scores.softmax(-1).mean(1))  # [B, T, S]

    handles = [layer.cross_attention.register_forward_hook(hook, with_kwargs=True)
               for _, layer in cross_attention_layers(model)]  # fmt: skip
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not maps:
        raise HeatmapUnsupported("heatmap=true: this model has no injected cross-attention blocks to read")
    return torch.stack(maps).mean(0)
