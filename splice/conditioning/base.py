"""The strategy interface, and the one answer to "does this decoder have its own cross-attention?"."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache, EncoderDecoderCache

# How the decoder families with native cross-attention name those modules (GPT-2, BERT: crossattention; BART, TrOCR:
# encoder_attn).
CROSS_ATTENTION_NAMES = ("crossattention", "cross_attn", "encoder_attn")


def is_cross_attention_name(name: str) -> bool:
    """Whether a dotted module or parameter name lies inside a decoder's native cross-attention (the one rule)."""
    return any(fragment in name for fragment in CROSS_ATTENTION_NAMES)


_NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# OPT has `word_embed_proj_dim` for its embeddings, but its layers run at `hidden_size`, so `hidden_size` comes first.
_HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim")
_NUM_HEADS_KEYS = ("num_attention_heads", "n_head", "num_heads")


def text_config(model: nn.Module) -> PreTrainedConfig | None:
    """The decoder's text config (a multimodal LM nests it)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def decoder_dimensions(decoder: nn.Module) -> tuple[int, int, float]:
    """Width, attention heads and layer-norm epsilon of a decoder, whatever its family calls them."""
    config = text_config(decoder)
    found = [
        next((v for v in (getattr(config, k, None) for k in keys) if isinstance(v, int)), None)
        for keys in (_HIDDEN_SIZE_KEYS, _NUM_HEADS_KEYS)
    ]
    if None in found:
        raise ValueError(
            f"Cannot read the hidden size and number of attention heads from {type(config).__name__}: it has none of "
            f"{_HIDDEN_SIZE_KEYS} / {_NUM_HEADS_KEYS}. Set `hidden_size` and `num_attention_heads` on the decoder "
            "config."
        )
    eps = getattr(config, "layer_norm_eps", None) or getattr(config, "layer_norm_epsilon", None) or 1e-5
    return found[0], found[1], eps


# Models whose position ids start after the padding id (RoBERTa's `padding_idx + 1`), so fewer positions are usable.
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "xmod",
                            "data2vec-text", "longformer", "ibert", "markuplm"}  # fmt: skip


def position_limit(config: Any) -> int | None:
    r"""
    The most tokens a model (config) can take: its `n_positions` / `max_position_embeddings` / `max_target_positions`
    (RoBERTa-style models lose `pad_token_id + 1` of them); `None` when it has no fixed limit (T5's relative positions).
    """
    for name in ("n_positions", "max_position_embeddings", "max_target_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", None) in _POSITIONS_AFTER_PADDING:
                value -= (getattr(config, "pad_token_id", None) or 1) + 1
            return max(value, 1)
    return None


def has_native_cross_attention(decoder: nn.Module | PreTrainedConfig | dict) -> bool:
    """Whether the decoder has (an instance) or can build (a config: its causal-LM class) cross-attention layers."""
    if isinstance(decoder, nn.Module):
        accepts = "encoder_hidden_states" in inspect.signature(decoder.forward).parameters
        return accepts and any(is_cross_attention_name(name) for name, _ in decoder.named_modules())
    if not isinstance(decoder, PreTrainedConfig):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING  # a large import, used rarely

    decoder_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(decoder), None)
    return decoder_class is not None and "encoder_hidden_states" in inspect.signature(decoder_class.forward).parameters


def enable_cross_attention(decoder_config: PreTrainedConfig) -> None:
    """Make the decoder config build its cross-attention layers (as transformers' composites do)."""
    decoder_config.is_decoder = True
    decoder_config.add_cross_attention = True


def self_attention_cache(cache: Cache | None) -> Cache | None:
    """The decoder's own cache: `generate` wraps it in an `EncoderDecoderCache`, which decoder-only LMs do not take."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


class Conditioning:
    """How the decoder reads the encoder states: everything about one mode lives in its strategy.

    A strategy is stateless (one shared instance per mode, `STRATEGIES`); what it adds to a model it returns from
    `build`, and the model registers those modules under the names given (they are checkpoint keys). The model never
    names a mode, a mode's module class or a mode's attribute: a new mode is a new subclass registered with
    `register_conditioning`, and nothing under `splice/models/` changes.
    """

    name: ClassVar[str]
    # Whether `decode` computes the decoder's position ids itself (the prefix shifts them); else the model derives them
    # from a left-padded decoder mask during `generate`.
    sets_position_ids: ClassVar[bool] = False

    def prepare_decoder_config(self, decoder_config: PreTrainedConfig) -> None:
        """Adjust the decoder's config before the decoder is built (native: build its cross-attention layers)."""

    def build(self, model: nn.Module) -> dict[str, nn.Module]:
        """Prepare `model.decoder` for this mode (in place) and return the modules the mode adds to the composite.

        Called once by the model's constructor, after its encoder and decoder exist; the model registers each returned
        module under its name (a state-dict prefix) and places it on the decoder's device and dtype.
        """
        raise NotImplementedError

    def initialize(self, model: nn.Module) -> None:
        """Set the parameters of this mode that a checkpoint did not provide and the decoder's init rule does not
        know (e.g. gates at zero). Runs inside `model.initialize_weights()`, under `torch.no_grad()`."""

    def adapt(self, model: nn.Module, states: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The encoder states `[B, S, E]` and mask `[B, S]` as this mode's `decode` reads them (default: unchanged)."""
        return states, mask

    def decode(self, model: nn.Module, states: Tensor, mask: Tensor | None, cache: Cache | None, **kwargs: Any) -> Any:
        """Run `model.decoder` on the decoder inputs, reading the adapted encoder states `[B, S, D]`.

        Returns the decoder's output (with `logits`) for the text positions.
        """
        raise NotImplementedError

    def parameter_names(self, model: nn.Module) -> set[str]:
        """Names (as in `model.named_parameters()`) of the decoder-side parameters this mode adds or trains, besides
        the modules `build` returned (those are counted by `conditioning_parameter_names`)."""
        return set()

    def positions_before_text(self, model: nn.Module, num_states: int | None) -> int | None:
        """How many decoder positions (cache entries) this mode places before the text, for `num_states` encoder
        states; `None` when that depends on `num_states` and it is not known yet."""
        return 0
