"""splice's TensorFlow classes (the JAX implementation lowered with jax2tf) against PyTorch: parity on pairs covering
every family, `model.fit` and a `GradientTape` loop, checkpoints shared both ways, a SavedModel reloaded for serving.

Every pair is checked in `test_flax.py` (the math is the same JAX code); here each family is lowered at least once:
the full pair × framework table is `benchmarks/frameworks.py`.
"""

import numpy as np
import pytest
import tensorflow as tf
import torch
from frameworks import build_pair, numpy_inputs, torch_generate, torch_logits, transformers_logits

import splice
from splice.tf import TFEncoderDecoderModel, TFVisionEncoderDecoderModel

pytestmark = pytest.mark.usefixtures("one_thread")
# Every family module: the ViT module (DeiT's token on), GPT-2, the BERT body as encoder (RoBERTa's positions) and as
# decoder. The doc examples (test_seed_docs_frameworks.py) add vit-gpt2, vit-bert, bert-gpt2, bert2bert in TF.
TF_PAIRS = ["deit-gpt2", "roberta-bert"]


def _tf_class(pair):
    return TFVisionEncoderDecoderModel if pair.vision else TFEncoderDecoderModel


@pytest.fixture(scope="module", params=TF_PAIRS)
def pair(request, tmp_path_factory):
    built = build_pair(request.param, str(tmp_path_factory.mktemp(request.param)))
    return built, _tf_class(built).from_pretrained(built.directory)


def _tf_inputs(pair):
    return {k: tf.constant(v) for k, v in numpy_inputs(pair).items()}


def test_logits_and_ids_match_pytorch(pair):
    pair, model = pair
    out = model(**_tf_inputs(pair), decoder_input_ids=tf.constant(pair.decoder_input_ids.numpy()))
    assert isinstance(out.logits, tf.Tensor)
    assert np.abs(out.logits.numpy() - torch_logits(pair)).max() <= 1e-5
    assert np.abs(out["logits"].numpy() - transformers_logits(pair)).max() <= 1e-5
    for beams in (1, 3):
        got = model.generate(**_tf_inputs(pair), max_new_tokens=8, eos_token_id=pair.eos_token_id, num_beams=beams)
        np.testing.assert_array_equal(got.numpy(), torch_generate(pair, num_beams=beams))


def test_fit_lowers_the_loss_and_pytorch_loads_the_result(tmp_path):
    pair = build_pair("bert-gpt2", str(tmp_path / "pt"), dropout=False)
    model = TFEncoderDecoderModel.from_pretrained(pair.directory)
    batch = {**numpy_inputs(pair), "labels": pair.decoder_input_ids.numpy()}
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
    losses = model.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=4, verbose=0).history["loss"]
    with torch.no_grad():  # the first step's loss is PyTorch's: labels shifted right, the same decoder mask
        first = pair.torch_model(**pair.inputs, labels=pair.decoder_input_ids).loss.item()
    assert losses[-1] < losses[0] - 0.2 and losses[0] < first + 1e-3
    model.save_pretrained(tmp_path / "trained")
    reloaded = splice.EncoderDecoderModel.from_pretrained(tmp_path / "trained").eval()
    with torch.no_grad():
        expected = reloaded(**pair.inputs, labels=pair.decoder_input_ids)
    got = model(**batch)
    assert np.abs(got.logits.numpy() - expected.logits.numpy()).max() <= 1e-5
    assert abs(float(got.loss) - expected.loss.item()) <= 1e-5


def test_gradient_tape_loop_with_dropout(tmp_path):
    from tiny import gpt2_config, vit_config

    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), gpt2_config(resid_pdrop=0.1))
    model = TFVisionEncoderDecoderModel(config)
    pixels = tf.random.stateless_normal((2, 3, 30, 30), seed=(0, 1))
    labels = tf.constant(np.random.default_rng(0).integers(3, 99, (2, 5)))
    optimizer = tf.keras.optimizers.Adam(3e-3)
    losses = []
    for _ in range(6):
        with tf.GradientTape() as tape:
            loss = model(pixels, labels=labels, training=True).loss
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads) and len(grads) == len(model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.2
    # Dropout draws afresh each call: the same weights and batch give another training loss.
    assert float(model(pixels, labels=labels, training=True).loss) != float(
        model(pixels, labels=labels, training=True).loss
    )


def test_saved_model_serves_logits_and_generation(tmp_path):
    pair = build_pair("roberta-bert", str(tmp_path / "pt"))
    model = TFEncoderDecoderModel.from_pretrained(pair.directory)
    model.export_saved_model(tmp_path / "served", num_beams=3, max_new_tokens=8, eos_token_id=pair.eos_token_id)
    served = tf.saved_model.load(str(tmp_path / "served"))
    inputs = {k: tf.constant(v, tf.int32) for k, v in numpy_inputs(pair).items()}
    ids = tf.constant(pair.decoder_input_ids.numpy(), tf.int32)
    logits = served.signatures["serving_default"](**inputs, decoder_input_ids=ids)["logits"].numpy()
    assert np.abs(logits - torch_logits(pair)).max() <= 1e-5
    sequences = served.signatures["generate"](**inputs)["sequences"].numpy()
    np.testing.assert_array_equal(sequences, torch_generate(pair, num_beams=3))
    # The batch size is free: one row of the same inputs gives that row's answer.
    single = served.signatures["generate"](**{k: v[:1] for k, v in inputs.items()})["sequences"].numpy()
    np.testing.assert_array_equal(single[0], sequences[0][: single.shape[1]])


def test_converted_functions_are_shared_by_models_of_one_architecture(tmp_path):
    """A second TF model of the same configuration reuses the first one's converted (and traced) functions; one with
    other special tokens (the labels are shifted inside the function) gets its own."""
    from splice.flax import modeling as flax_modeling

    pair = build_pair("roberta-bert", str(tmp_path / "pt"))
    first = TFEncoderDecoderModel.from_pretrained(pair.directory)
    inputs = {k: tf.constant(v) for k, v in numpy_inputs(pair).items()}
    ids = tf.constant(pair.decoder_input_ids.numpy())
    expected = first(**inputs, decoder_input_ids=ids).logits.numpy()
    cached = set(flax_modeling._COMPILED)
    second = TFEncoderDecoderModel.from_pretrained(pair.directory)
    np.testing.assert_array_equal(second(**inputs, decoder_input_ids=ids).logits.numpy(), expected)
    assert set(flax_modeling._COMPILED) <= cached  # nothing converted again
    # Other weights through the shared function: their own logits, as the JAX model computes them.
    third = TFEncoderDecoderModel(flax_model=splice.FlaxEncoderDecoderModel(first.config, seed=3))
    got = third(**inputs, decoder_input_ids=ids).logits.numpy()
    assert set(flax_modeling._COMPILED) <= cached
    jax_logits = third.flax_model(**numpy_inputs(pair), decoder_input_ids=pair.decoder_input_ids.numpy()).logits
    assert np.abs(got - np.asarray(jax_logits)).max() <= 1e-5 and np.abs(got - expected).max() > 1e-3
    # Labels are shifted with the pad / start tokens inside the function: other special tokens, another function.
    labels = tf.constant(pair.decoder_input_ids.numpy())
    first(**inputs, labels=labels)
    cached = set(flax_modeling._COMPILED)
    second.flax_model.config.pad_token_id = first.config.pad_token_id + 1
    second(**inputs, labels=labels)
    assert len(set(flax_modeling._COMPILED) - cached) == 1
