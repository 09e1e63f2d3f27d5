"""transformers' TF composite classes, `TFVisionEncoderDecoderModel` and `TFEncoderDecoderModel`, as Keras 3 models.

One implementation of the math: the JAX composite (`splice.flax`), lowered to TensorFlow with `jax2tf` (StableHLO in
an `XlaCallModule` op, batch and sequence sizes symbolic). The parameters are Keras variables named by their checkpoint
keys; TensorFlow's gradients flow through the converted function, so `model.fit`, a `GradientTape` loop and a
SavedModel for TF Serving all work on the same weights as the PyTorch and JAX classes (same checkpoint files).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from jax.experimental import jax2tf  # noqa: E402

from .._compat import JAX2TF_SORT_TOP_K  # noqa: E402
from ..flax.modeling import (  # noqa: E402
    FlaxEncoderDecoderModel,
    FlaxSpliceModel,
    FlaxVisionEncoderDecoderModel,
    _generate,
    shared_compiled,
)
from ..flax.weights import flatten, unflatten  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"splice's TF classes need Keras on the TensorFlow backend; KERAS_BACKEND={keras.backend.backend()}."
    )


class TFSeq2SeqLMOutput(dict):
    """`loss` (when labels were given), `logits` `[B, T, V]`, `encoder_last_hidden_state` `[B, S, E]`; a dict that
    also reads as attributes, so Keras can trace it."""

    __getattr__ = dict.get


class TFSpliceModel(keras.Model):
    """The shared TF composite; subclasses fix the Flax class (which fixes config class and encoder input)."""

    flax_class: type[FlaxSpliceModel] = FlaxSpliceModel

    def __init__(self, config: Any = None, encoder: Any = None, decoder: Any = None, *, flax_model: Any = None,
                 **kwargs: Any):  # fmt: skip
        super().__init__(**kwargs)
        if encoder is not None or decoder is not None:
            raise ValueError(
                "Pass a config (random weights) or use `from_encoder_decoder_pretrained(encoder_path, decoder_path)`; "
                "TF model instances as encoder/decoder are not supported."
            )
        if flax_model is None:
            if config is None:
                raise ValueError(f"Pass a config, e.g. `{self.flax_class.config_class.__name__}(...)`.")
            flax_model = self.flax_class(config)
        self.flax_model = flax_model
        self.main_input_name = flax_model.main_input_name
        flat = flatten(flax_model.params)
        self._names = list(flat)
        self._params = []
        for name, value in flat.items():
            variable = self.add_weight(name=name, shape=value.shape, initializer="zeros", dtype="float32")
            variable.assign(np.asarray(value))
            self._params.append(variable)
        self.built = True

    # ---- loading and saving, through the JAX class (the files are the PyTorch classes' format) ------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, **kwargs: Any) -> TFSpliceModel:
        """Load a composite checkpoint written by splice or transformers (PyTorch, JAX or TF; the same files)."""
        kwargs.pop("from_pt", None)
        return cls(flax_model=cls.flax_class.from_pretrained(pretrained_model_name_or_path, *args, **kwargs))

    @classmethod
    def from_encoder_decoder_pretrained(cls, encoder_pretrained_model_name_or_path: str | None = None,
                                        decoder_pretrained_model_name_or_path: str | None = None, *model_args: Any,
                                        **kwargs: Any) -> TFSpliceModel:  # fmt: skip
        """Join a pretrained encoder and decoder with the PyTorch class's rules (see the JAX class)."""
        flax_model = cls.flax_class.from_encoder_decoder_pretrained(
            encoder_pretrained_model_name_or_path, decoder_pretrained_model_name_or_path, *model_args, **kwargs
        )
        return cls(flax_model=flax_model)

    def _jax_params(self) -> dict:
        return unflatten(
            dict(zip(self._names, (v.numpy() for v in self._params), strict=True)), self.flax_model._template
        )

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """Write config.json, generation_config.json and model.safetensors from the current (trained) variables."""
        self.flax_model.save_pretrained(save_directory, params=self._jax_params())

    @property
    def config(self) -> Any:
        """The composite config (the JAX model's; `model.config = other` re-points it, as in transformers)."""
        return self.flax_model.config

    @config.setter
    def config(self, value: Any) -> None:
        self.flax_model.config = value

    @property
    def generation_config(self) -> Any:
        return self.flax_model.generation_config

    # ---- the forward pass ---------------------------------------------------------------------------------------

    def _architecture(self) -> tuple:
        """What a converted function depends on besides its own arguments: the JAX class (encoder input, label rules),
        the graph definition, the computation dtype and the special tokens (labels are shifted inside the function)."""
        flax_model = self.flax_model
        special = json.dumps(flax_model.special_tokens(), sort_keys=True)
        return type(flax_model), flax_model._graphdef, flax_model.dtype, special

    def _frozen_flax_model(self) -> FlaxSpliceModel:
        """A copy of the JAX model without parameters and with its own configs, for a converted function shared by
        every model of this architecture (later edits of this model's config must not change what it traces)."""
        frozen = copy.copy(self.flax_model)
        frozen.config = copy.deepcopy(self.flax_model.config)
        frozen.generation_config = copy.deepcopy(self.flax_model.generation_config)
        frozen.params = None
        return frozen

    def _converted(self, key: Any, make_fn: Any, shapes: list[str | None]) -> Any:
        """`fn(params, *args)` in JAX (`fn = make_fn(frozen JAX model)`) → a TF function differentiable in the
        parameters, cached per architecture (`_architecture`) and `key`: a second model of the same configuration
        reuses it (`splice.flax.modeling.shared_compiled`)."""
        names, template = self._names, self.flax_model._template

        def make() -> Any:
            fn = make_fn(self._frozen_flax_model())

            def on_list(flat_params: list, *args: Any) -> Any:
                return fn(unflatten(dict(zip(names, flat_params, strict=True)), template), *args)

            converted = jax2tf.convert(on_list, with_gradient=True, polymorphic_shapes=[None, *shapes])
            return tf.function(converted, autograph=False, reduce_retracing=True)

        return shared_compiled(("tf", *self._architecture(), key, tuple(shapes)), make)

    def call(
        self, inputs: Any = None, attention_mask: Any = None, decoder_input_ids: Any = None,
        decoder_attention_mask: Any = None, labels: Any = None, training: bool = False, **kwargs: Any,
    ) -> TFSeq2SeqLMOutput:  # fmt: skip
        r"""
        The reference classes' TF call: the encoder input (`pixel_values` `[B, C, H, W]` or `input_ids` `[B, S]` with
        `attention_mask`), `decoder_input_ids` (or `labels`, shifted right) → `logits`, and `loss` with `labels`.
        """
        if isinstance(inputs, dict):  # Keras passes a batch's dict (as `fit` and `predict` do) as the first argument
            kwargs, inputs = {**inputs, **kwargs}, None
        inputs = kwargs.pop(self.main_input_name, inputs)
        attention_mask = kwargs.pop("attention_mask", attention_mask)
        decoder_input_ids = kwargs.pop("decoder_input_ids", decoder_input_ids)
        decoder_attention_mask = kwargs.pop("decoder_attention_mask", decoder_attention_mask)
        labels = kwargs.pop("labels", labels)
        for name in ("output_attentions", "output_hidden_states", "return_dict", "use_cache"):
            kwargs.pop(name, None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.call got unexpected arguments {sorted(kwargs)}.")
        given = {"attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids,
                 "decoder_attention_mask": decoder_attention_mask, "labels": labels}  # fmt: skip
        present = tuple(name for name, value in given.items() if value is not None)
        vision = self.main_input_name == "pixel_values"
        shapes = ["(b, ...)" if vision else "(b, s)"]
        shapes += ["(b, s)" if name == "attention_mask" else "(b, t)" for name in present] + [None]

        def make_forward(flax_model: FlaxSpliceModel) -> Any:
            def forward(params: dict, x: Any, *rest: Any) -> Any:
                *values, seed = rest
                rng = jax.random.key(seed) if training else None
                out = flax_model(x, params=params, train=training, dropout_rng=rng, **dict(zip(present, values)))
                result = {"logits": out.logits, "encoder_last_hidden_state": out.encoder_last_hidden_state}
                return result if out.loss is None else {**result, "loss": out.loss}

            return forward

        fn = self._converted(("call", present, bool(training)), make_forward, shapes)
        seed = tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int32) if training else tf.constant(0, tf.int32)
        values = [tf.convert_to_tensor(given[name]) for name in present]
        out = fn([v.value for v in self._params], tf.convert_to_tensor(inputs), *values, seed)
        return TFSeq2SeqLMOutput(out)

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> tf.Tensor:  # fmt: skip
        """`model.fit` on dicts of the call's inputs with `labels`: the loss is the model's own (no `loss=`)."""
        if y_pred is None or y_pred.get("loss") is None:
            raise ValueError("model.fit needs `labels` in each batch's input dict (the model computes its loss).")
        return y_pred["loss"]

    # ---- generation and export ----------------------------------------------------------------------------------

    def _generate_fn(self, settings: Any, masked: bool) -> Any:
        graphdef, dtype = self.flax_model._graphdef, self.flax_model.dtype
        settings = dataclasses.replace(settings, sort_top_k=JAX2TF_SORT_TOP_K)

        def search(params: dict, x: Any, *rest: Any) -> Any:
            mask = rest[0] if masked else None
            return _generate(graphdef, dtype, params, x, mask, jax.random.key(rest[-1]), settings=settings)

        vision = self.main_input_name == "pixel_values"
        shapes = ["(b, ...)" if vision else "(b, s)"] + (["(b, s)"] if masked else []) + [None]
        return self._converted(("generate", settings, masked), lambda flax_model: search, shapes)

    def generate(self, inputs: Any = None, attention_mask: Any = None, seed: int = 0, **kwargs: Any) -> tf.Tensor:
        r"""
        Generate token ids `[B * num_return_sequences, L]` (greedy, beam search with `num_beams`, sampling with
        `do_sample=True` and `seed`), with the JAX class's settings and rules; one compiled search per setting.
        """
        inputs = kwargs.pop(self.main_input_name, inputs)
        settings = self.flax_model.search_settings(kwargs.pop("generation_config", None), **kwargs)
        fn = self._generate_fn(settings, attention_mask is not None)
        masks = [] if attention_mask is None else [tf.convert_to_tensor(attention_mask)]
        sequences, length = fn([v.value for v in self._params], tf.convert_to_tensor(inputs), *masks,
                               tf.constant(seed, tf.int32))  # fmt: skip
        return sequences[:, :length]

    def export_saved_model(self, export_dir: str | Path, **generate_kwargs: Any) -> None:
        r"""
        Write a TF SavedModel (for TF Serving) with two signatures, batch size free: `serving_default` (encoder input
        and `decoder_input_ids` → `logits`) and `generate` (encoder input → `sequences`, with `generate_kwargs`
        fixed at export, e.g. `num_beams=3, max_new_tokens=32`). Text models take `attention_mask` in both.
        """
        vision = self.main_input_name == "pixel_values"
        if vision:
            enc = self.config.encoder
            spec = tf.TensorSpec([None, enc.num_channels, enc.image_size, enc.image_size], tf.float32)
        else:
            spec = tf.TensorSpec([None, None], tf.int32)
        ids = tf.TensorSpec([None, None], tf.int32)
        masks = [] if vision else [tf.TensorSpec([None, None], tf.int32)]
        module = tf.Module()
        module.variables_ = [v.value for v in self._params]
        settings = self.flax_model.search_settings(**generate_kwargs)
        forward_fn = self._converted(
            ("export", vision), lambda flax_model: lambda params, x, *rest: flax_model(
                x, params=params, decoder_input_ids=rest[-1], attention_mask=rest[0] if len(rest) > 1 else None
            ).logits,
            ["(b, ...)" if vision else "(b, s)", *(["(b, s)"] if masks else []), "(b, t)"],
        )  # fmt: skip
        generate_fn = self._generate_fn(settings, bool(masks))

        def logits(x: tf.Tensor, *rest: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": forward_fn(module.variables_, x, *rest)}

        def sequences(x: tf.Tensor, *rest: tf.Tensor) -> dict[str, tf.Tensor]:
            seqs, length = generate_fn(module.variables_, x, *rest, tf.constant(0, tf.int32))
            return {"sequences": seqs[:, :length]}

        arguments = [tf.TensorSpec(spec.shape, spec.dtype, self.main_input_name)]
        arguments += [tf.TensorSpec(m.shape, m.dtype, "attention_mask") for m in masks]
        decoder_ids = tf.TensorSpec(ids.shape, ids.dtype, "decoder_input_ids")
        module.serving = tf.function(logits, input_signature=[*arguments, decoder_ids])
        module.generate = tf.function(sequences, input_signature=arguments)
        signatures = {"serving_default": module.serving, "generate": module.generate}
        tf.saved_model.save(module, str(export_dir), signatures=signatures)


class TFVisionEncoderDecoderModel(TFSpliceModel):
    """Image-to-text in TensorFlow (ViT/DeiT encoder; GPT-2, BERT or RoBERTa decoder): transformers' TF API, pixels
    NCHW, checkpoints shared with the PyTorch and JAX classes."""

    flax_class = FlaxVisionEncoderDecoderModel


class TFEncoderDecoderModel(TFSpliceModel):
    """Text-to-text in TensorFlow (BERT/RoBERTa encoder; GPT-2, BERT or RoBERTa decoder): transformers' TF API."""

    flax_class = FlaxEncoderDecoderModel
