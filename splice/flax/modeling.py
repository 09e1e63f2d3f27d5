"""transformers' Flax composite classes: `FlaxVisionEncoderDecoderModel` and `FlaxEncoderDecoderModel`, on Flax NNX.

A model is a config, a `params` pytree (nested dicts of arrays, keyed like the checkpoint) and jit-compiled pure
functions of it, as transformers' Flax models were: `model(..., params=new_params)` is differentiable in `params`,
so optax training is `jax.grad` of a loss built on `model.__call__`. Checkpoints are transformers' own (config.json +
model.safetensors, the PyTorch classes' keys), so PyTorch and JAX read each other's saves.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from transformers import GenerationConfig

from ..configuration import EncoderDecoderConfig, SpliceConfig, VisionEncoderDecoderConfig
from ..token_ids import resolve_special_tokens, validate_token_ids
from . import generation
from .composite import CompositeModule
from .weights import flatten, match_composite, read_checkpoint, unflatten, write_checkpoint


@struct.dataclass
class Seq2SeqLMOutput:
    """`logits` `[B, T, V]`, `encoder_last_hidden_state` `[B, S, E]`, `loss` when labels were given."""

    logits: jax.Array
    encoder_last_hidden_state: jax.Array | None = None
    loss: jax.Array | None = None
    past_key_values: dict | None = None


@struct.dataclass
class EncoderOutput:
    """`last_hidden_state` `[B, S, E]`: what `encode` returns and `decode` reads."""

    last_hidden_state: jax.Array


@struct.dataclass
class GenerateOutput:
    """`sequences` `[B * num_return_sequences, L]` (NumPy): the start token, then the generated ids (padded when
    finished)."""

    sequences: np.ndarray


def shift_tokens_right(labels: jax.Array, pad_token_id: int, decoder_start_token_id: int) -> jax.Array:
    """Decoder inputs from labels: prepend the start token, drop the last label, -100 becomes padding."""
    shifted = jnp.concatenate([jnp.full((labels.shape[0], 1), decoder_start_token_id, labels.dtype), labels[:, :-1]], 1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean token cross-entropy over labels other than -100 (0 for a batch of only -100), as the PyTorch classes."""
    valid = labels != -100
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -(picked * valid).sum() / jnp.maximum(valid.sum(), 1)


# Compiled functions, shared by every model of one architecture: keyed by what the traced function depends on (the
# module's graph definition, the computation dtype, the static arguments), never by the instance, so a second model of
# the same configuration (a reload, another seed) reuses the first one's compilations. Least recently used first out.
COMPILED_CACHE_SIZE = 128
_COMPILED: OrderedDict[Hashable, Any] = OrderedDict()
_COMPILED_LOCK = threading.Lock()


def shared_compiled(key: Hashable, make: Callable[[], Any]) -> Any:
    """The compiled function cached under `key` (made by `make()` on a miss), shared across model instances."""
    with _COMPILED_LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
    made = make()
    with _COMPILED_LOCK:
        made = _COMPILED.setdefault(key, made)  # another thread may have made it meanwhile: keep one
        _COMPILED.move_to_end(key)
        while len(_COMPILED) > COMPILED_CACHE_SIZE:
            _COMPILED.popitem(last=False)
    return made


class FlaxSpliceModel:
    """The shared JAX composite; subclasses fix the config class and the encoder input (the reference classes below)."""

    config_class: type[SpliceConfig] = SpliceConfig
    main_input_name = "pixel_values"
    torch_class_name = "SpliceModel"

    def __init__(
        self, config: SpliceConfig, input_shape: Any = None, seed: int = 0, dtype: jnp.dtype = jnp.float32,
        _do_init: bool = True,
    ):  # fmt: skip
        self.config, self.dtype = config, dtype
        self.generation_config = GenerationConfig.from_model_config(config)

        def build() -> CompositeModule:
            return CompositeModule(config, rngs=nnx.Rngs(seed))

        module = build() if _do_init else nnx.eval_shape(build)
        self._graphdef, state = nnx.split(module, nnx.Param)
        self._template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict())
        self.params = state.to_pure_dict() if _do_init else None
        self._compiled: dict[Any, Any] = {}

    # ---- construction, loading, saving -------------------------------------------------------------------------

    def init_weights(self, rng: jax.Array, input_shape: Any = None, params: dict | None = None) -> dict:
        """Freshly initialised parameters (a pytree like `model.params`) from the PRNG key `rng`; with `params`, as in
        transformers' Flax models, only the parameters missing from `params` are drawn (the others are kept).

        `input_shape` is the reference classes' argument, accepted for their API: NNX builds parameters from the config
        alone, without tracing a dummy input, so it changes nothing.
        """
        seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
        fresh = nnx.split(CompositeModule(self.config, rngs=nnx.Rngs(seed)), nnx.Param)[1].to_pure_dict()
        if params is None:
            return fresh
        return unflatten({**flatten(fresh), **flatten(params)}, self._template)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, *args: Any, dtype: jnp.dtype = jnp.float32,
        config: SpliceConfig | None = None, from_pt: bool = True, **kwargs: Any,
    ) -> FlaxSpliceModel:  # fmt: skip
        r"""
        Load a composite checkpoint (config.json + model.safetensors) written by splice or by transformers' PyTorch
        classes, from a directory or the hub. `from_pt` is accepted for transformers' code: the files are the same.
        """
        hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        config = config or cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub, **kwargs)
        model = cls(config, dtype=dtype, _do_init=False)
        tensors = read_checkpoint(pretrained_model_name_or_path, **hub)
        expected = {k: v.shape for k, v in flatten(model._template).items()}
        flat = match_composite(expected, tensors, config, str(pretrained_model_name_or_path))
        model.params = unflatten({k: jnp.asarray(v) for k, v in flat.items()}, model._template)
        if Path(str(pretrained_model_name_or_path), "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path)
        return model

    @classmethod
    def from_encoder_decoder_pretrained(
        cls, encoder_pretrained_model_name_or_path: str | None = None,
        decoder_pretrained_model_name_or_path: str | None = None, *model_args: Any, **kwargs: Any,
    ) -> FlaxSpliceModel:  # fmt: skip
        r"""
        Join a pretrained encoder and a pretrained decoder, with the PyTorch class's rules (the `encoder_` /
        `decoder_` kwargs, cross-attention added with fresh weights, special tokens): the PyTorch composite is
        assembled, and its weights become this model's. `encoder_from_pt`, `decoder_from_pt` and `from_pt` are
        accepted for transformers' code (the checkpoints are the same files); `dtype=` sets the computation dtype.
        """
        import tempfile

        from .. import models

        for flag in ("from_pt", "encoder_from_pt", "decoder_from_pt"):
            kwargs.pop(flag, None)
        dtype = kwargs.pop("dtype", jnp.float32)
        torch_model = getattr(models, cls.torch_class_name).from_encoder_decoder_pretrained(
            encoder_pretrained_model_name_or_path, decoder_pretrained_model_name_or_path, *model_args, **kwargs
        )
        with tempfile.TemporaryDirectory() as tmp:
            torch_model.save_pretrained(tmp)
            return cls.from_pretrained(tmp, dtype=dtype)

    def save_pretrained(self, save_directory: str | Path, params: dict | None = None, **kwargs: Any) -> None:
        """Write config.json, generation_config.json and model.safetensors (the PyTorch classes' format and keys)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(save_directory)
        self.generation_config.save_pretrained(save_directory)
        params = self.params if params is None else params
        write_checkpoint({k: np.asarray(v, np.float32) for k, v in flatten(params).items()}, save_directory)

    # ---- the forward pass ---------------------------------------------------------------------------------------

    def _jit(self, name: str, fn: Any, **static: Any) -> Any:
        """`fn` jit-compiled for this architecture (graph definition), dtype and static arguments: shared by every
        model with the same ones (`shared_compiled`); the instance keeps a lookup table in front of the shared cache."""
        key = (name, self.dtype, tuple(sorted(static.items())))
        if key not in self._compiled:
            self._compiled[key] = shared_compiled(
                ("jax", fn, self._graphdef, *key),
                lambda: jax.jit(functools.partial(fn, self._graphdef, self.dtype, **static)),
            )
        return self._compiled[key]

    def _check_params(self, params: dict | None) -> dict:
        params = self.params if params is None else params
        if params is None:
            raise ValueError("The model has no parameters: pass `params=` or load them (`init_weights`).")
        return params

    def __call__(
        self, inputs: Any = None, attention_mask: Any = None, decoder_input_ids: Any = None,
        decoder_attention_mask: Any = None, decoder_position_ids: Any = None, labels: Any = None,
        params: dict | None = None, dropout_rng: jax.Array | None = None, train: bool = False, **kwargs: Any,
    ) -> Seq2SeqLMOutput:  # fmt: skip
        r"""
        Logits of `decoder_input_ids` given the encoder input (`pixel_values` `[B, C, H, W]`, NCHW, or `input_ids`
        `[B, S]` with `attention_mask`). With `labels` and no `decoder_input_ids`, the decoder inputs are the labels
        shifted right and `loss` is the mean cross-entropy over labels other than -100. `train=True` enables dropout
        and needs `dropout_rng`.
        """
        inputs = kwargs.pop(self.main_input_name, inputs)
        for name in ("output_attentions", "output_hidden_states", "return_dict"):
            kwargs.pop(name, None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__call__ got unexpected arguments {sorted(kwargs)}.")
        if inputs is None:
            raise ValueError(f"Pass the encoder input `{self.main_input_name}`.")
        if train and dropout_rng is None:
            raise ValueError("train=True enables dropout: pass `dropout_rng=jax.random.key(...)`.")
        special = self.special_tokens()
        self._check_ids(inputs, decoder_input_ids, labels)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Pass `decoder_input_ids` or `labels`.")
            labels = jnp.asarray(labels)
            decoder_input_ids = shift_tokens_right(labels, special["pad_token_id"], special["decoder_start_token_id"])
            if decoder_attention_mask is None:
                decoder_attention_mask = self.decoder_attention_mask_from_labels(labels, decoder_input_ids)
        forward = self._jit("forward", _forward, train=train)
        logits, states = forward(self._check_params(params), jnp.asarray(inputs), _opt(attention_mask),
                                 jnp.asarray(decoder_input_ids), _opt(decoder_attention_mask),
                                 _opt(decoder_position_ids), dropout_rng)  # fmt: skip
        loss = None if labels is None else cross_entropy(logits, jnp.asarray(labels))
        return Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=states, loss=loss)

    def _check_ids(self, inputs: Any, decoder_input_ids: Any, labels: Any) -> None:
        """Ids outside a vocabulary are the PyTorch classes' `ValueError` (JAX would clamp them silently); arrays
        being traced (inside `jit` / `grad` of the caller) cannot be read and are left to the caller."""
        import torch

        from ..models.checks import check_ids

        given = [("decoder_input_ids", decoder_input_ids, self.config.decoder.vocab_size, "decoder"),
                 ("labels", labels, self.config.decoder.vocab_size, "decoder")]  # fmt: skip
        if self.main_input_name == "input_ids":
            given.append(("input_ids", inputs, self.config.encoder.vocab_size, "encoder"))
        for name, ids, vocab_size, part in given:
            if ids is not None and not isinstance(ids, jax.core.Tracer):
                check_ids(name, torch.from_numpy(np.asarray(ids).astype(np.int64)), vocab_size, part)

    def decoder_attention_mask_from_labels(self, labels: jax.Array, decoder_input_ids: jax.Array) -> jax.Array:
        """The PyTorch class's rule (see `splice.VisionEncoderDecoderModel`): position t > 0 is padding where label
        t-1 is -100."""
        return jnp.concatenate([jnp.ones_like(labels[:, :1]), (labels[:, :-1] != -100).astype(labels.dtype)], 1)

    def encode(self, inputs: Any, attention_mask: Any = None, params: dict | None = None, dropout_rng=None,
               train: bool = False) -> EncoderOutput:  # fmt: skip
        """The encoder's `last_hidden_state` `[B, S, E]`, as `EncoderOutput`."""
        states = self._jit("encode", _encode, train=train)(self._check_params(params), jnp.asarray(inputs),
                                                           _opt(attention_mask), dropout_rng)  # fmt: skip
        return EncoderOutput(last_hidden_state=states)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs: Any, params: dict | None = None) -> dict:
        """A fixed-size decoding cache for `max_length` tokens (`decode(..., past_key_values=cache)`)."""
        states = getattr(encoder_outputs, "last_hidden_state", encoder_outputs)
        if states.shape[0] != batch_size:
            raise ValueError(f"batch_size={batch_size} but the encoder outputs hold {states.shape[0]} rows.")
        return self._jit("cache", _init_cache, max_length=max_length)(self._check_params(params), states)

    def decode(
        self, decoder_input_ids: Any, encoder_outputs: jax.Array, encoder_attention_mask: Any = None,
        decoder_attention_mask: Any = None, decoder_position_ids: Any = None, past_key_values: dict | None = None,
        params: dict | None = None, dropout_rng=None, train: bool = False,
    ) -> Seq2SeqLMOutput:  # fmt: skip
        """Decoder logits for `decoder_input_ids` given `encoder_outputs` (from `encode`); with `past_key_values`
        (from `init_cache`, then from the previous call) only the new tokens are fed."""
        logits, cache = self._jit("decode", _decode, train=train)(
            self._check_params(params), jnp.asarray(decoder_input_ids),
            getattr(encoder_outputs, "last_hidden_state", encoder_outputs), _opt(encoder_attention_mask),
            _opt(decoder_attention_mask), _opt(decoder_position_ids), past_key_values, dropout_rng,
        )  # fmt: skip
        return Seq2SeqLMOutput(logits=logits, past_key_values=cache)

    # ---- generation ---------------------------------------------------------------------------------------------

    def special_tokens(self) -> dict[str, Any]:
        """The special tokens, by splice's one rule (`splice.token_ids`), validated against the vocabulary."""
        values = resolve_special_tokens(self.config, self.generation_config)
        validate_token_ids(values, self.config.decoder.vocab_size, values.pop("_source"))
        return values

    def search_settings(self, generation_config: GenerationConfig | None = None, **kwargs: Any):
        """The compiled search's settings: the model's generation config, updated with `kwargs` as transformers does."""
        config = copy.deepcopy(generation_config or self.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"generate() got arguments that are not generation settings: {sorted(unused)}.")
        if config.max_new_tokens is not None:  # the encoder-decoder prompt is the start token
            config.max_length = 1 + config.max_new_tokens
        special = self.special_tokens()
        special.update({k: kwargs[k] for k in special if kwargs.get(k) is not None})
        return generation.settings_from(config, special)

    def generate(
        self, inputs: Any = None, attention_mask: Any = None, params: dict | None = None,
        prng_key: jax.Array | None = None, generation_config: GenerationConfig | None = None, **kwargs: Any,
    ) -> GenerateOutput:  # fmt: skip
        r"""
        Generate from the encoder input (`pixel_values` NCHW or `input_ids` with `attention_mask`): greedy by
        default, beam search with `num_beams`, sampling with `do_sample=True` (and `prng_key`; `temperature`, `top_k`,
        `top_p`). Settings come from `model.generation_config`, overridden by `kwargs` (`max_length`,
        `max_new_tokens`, `length_penalty`, `early_stopping`, `num_return_sequences`, special-token ids). The whole
        search is one jit-compiled loop with a fixed-size cache; the result is trimmed to the longest sequence.
        """
        inputs = kwargs.pop(self.main_input_name, inputs)
        settings = self.search_settings(generation_config, **kwargs)
        if settings.do_sample and prng_key is None:
            raise ValueError("do_sample=True needs a `prng_key` (e.g. `jax.random.key(0)`).")
        key = jax.random.key(0) if prng_key is None else prng_key
        sequences, length = self._jit("generate", _generate, settings=settings)(
            self._check_params(params), jnp.asarray(inputs), _opt(attention_mask), key
        )
        # On the host as NumPy: transformers v5's tokenizers decode NumPy, not JAX arrays.
        return GenerateOutput(sequences=np.asarray(sequences[:, : int(length)]))


def _opt(x: Any) -> jax.Array | None:
    return None if x is None else jnp.asarray(x)


def _rngs(dropout_rng: jax.Array | None, train: bool) -> nnx.Rngs | None:
    """Dropout keys drawn from `dropout_rng` with the "rbg" generator: its masks compile faster than threefry's (see
    benchmarks/README.md) and lower to TensorFlow."""
    if not train:
        return None
    data = jax.random.key_data(dropout_rng) if jnp.issubdtype(dropout_rng.dtype, jax.dtypes.prng_key) else dropout_rng
    data = jnp.tile(jnp.asarray(data, jnp.uint32).reshape(-1), 2)[:4]  # rbg keys hold 4 words
    return nnx.Rngs(dropout=jax.random.wrap_key_data(data, impl="rbg"))


def _forward(graphdef, dtype, params, inputs, mask, dec_ids, dec_mask, dec_pos, dropout_rng, *, train):
    module, rngs = nnx.merge(graphdef, params), _rngs(dropout_rng, train)
    states = module.encode(inputs, mask, rngs, dtype)  # [B, S, E]
    logits, _ = module.decode(dec_ids, states, mask, dec_mask, rngs, dtype, decoder_position_ids=dec_pos)
    return logits, states


def _encode(graphdef, dtype, params, inputs, mask, dropout_rng, *, train):
    return nnx.merge(graphdef, params).encode(inputs, mask, _rngs(dropout_rng, train), dtype)


def _init_cache(graphdef, dtype, params, states, *, max_length):
    return nnx.merge(graphdef, params).init_cache(states, max_length, dtype)


def _decode(graphdef, dtype, params, ids, states, mask, dec_mask, dec_pos, cache, dropout_rng, *, train):
    module = nnx.merge(graphdef, params)
    return module.decode(ids, states, mask, dec_mask, _rngs(dropout_rng, train), dtype, decoder_position_ids=dec_pos,
                         cache=cache)  # fmt: skip


def _generate(graphdef, dtype, params, inputs, mask, key, *, settings):
    """Encode once, repeat the states per beam, run the search; returns padded sequences and the output length."""
    module = nnx.merge(graphdef, params)
    states = module.encode(inputs, mask, None, dtype)  # [B, S, E]
    batch, beams = states.shape[0], settings.num_beams
    if beams > 1:
        states = jnp.repeat(states, beams, axis=0)  # [B*K, S, E], beam-major within each input
        mask = None if mask is None else jnp.repeat(mask, beams, axis=0)
    cache = module.init_cache(states, settings.max_length, dtype)

    def step(ids, cache):
        return module.decode(ids, states, mask, None, None, dtype, cache=cache)

    if beams > 1:
        return generation.beam_search(step, cache, batch, settings)
    return generation.greedy_or_sample(step, cache, batch, settings, key)


class FlaxVisionEncoderDecoderModel(FlaxSpliceModel):
    """Image-to-text in JAX (ViT/DeiT encoder; GPT-2, BERT or RoBERTa decoder): transformers' Flax API, checkpoints."""

    config_class = VisionEncoderDecoderConfig
    main_input_name = "pixel_values"
    torch_class_name = "VisionEncoderDecoderModel"


class FlaxEncoderDecoderModel(FlaxSpliceModel):
    """Text-to-text in JAX (BERT/RoBERTa encoder; GPT-2, BERT or RoBERTa decoder), transformers' Flax API; the encoder's
    `attention_mask` also masks the cross-attention."""

    config_class = EncoderDecoderConfig
    main_input_name = "input_ids"
    torch_class_name = "EncoderDecoderModel"

    def decoder_attention_mask_from_labels(self, labels: jax.Array, decoder_input_ids: jax.Array) -> jax.Array:
        """The PyTorch class's rule (see `splice.EncoderDecoderModel`): decoder inputs equal to `pad_token_id` are
        masked, except position 0 (the start token)."""
        mask = (decoder_input_ids != self.special_tokens()["pad_token_id"]).astype(labels.dtype)
        return mask.at[:, 0].set(1)
