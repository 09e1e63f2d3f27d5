"""splice's JAX classes against PyTorch: every family pair (same checkpoint → same logits, same greedy and beam ids),
checkpoints both ways bit for bit, optax training, the text encoder's mask, dtype, sampling, and loud failures."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from frameworks import PAIRS, build_pair, numpy_inputs, torch_generate, torch_logits, transformers_logits
from safetensors.numpy import load_file
from tiny import GPT2_NO_DROPOUT, gpt2_config, randomize, vit_config

import splice
from splice.flax import FlaxEncoderDecoderModel, FlaxVisionEncoderDecoderModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _flax_class(pair):
    return FlaxVisionEncoderDecoderModel if pair.vision else FlaxEncoderDecoderModel


@pytest.fixture(scope="module", params=PAIRS)
def pair(request, tmp_path_factory):
    built = build_pair(request.param, str(tmp_path_factory.mktemp(request.param)))
    return built, _flax_class(built).from_pretrained(built.directory)


def test_logits_match_pytorch_and_transformers(pair):
    pair, model = pair
    logits = np.asarray(model(**numpy_inputs(pair), decoder_input_ids=pair.decoder_input_ids.numpy()).logits)
    assert np.abs(logits - torch_logits(pair)).max() <= 1e-5
    assert np.abs(logits - transformers_logits(pair)).max() <= 1e-5


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_pytorch(pair, num_beams):
    pair, model = pair
    expected = torch_generate(pair, num_beams=num_beams)
    got = model.generate(**numpy_inputs(pair), max_new_tokens=8, eos_token_id=pair.eos_token_id, num_beams=num_beams)
    np.testing.assert_array_equal(np.asarray(got.sequences), expected)
    if num_beams == 1:  # rows finish at different steps: the finished one is padded, as in PyTorch
        assert (expected[0] == pair.eos_token_id).any() and expected.shape[1] > 2


@pytest.mark.parametrize("name", ["vit-gpt2", "roberta-bert"])
def test_cached_decode_equals_full_forward(name, tmp_path):
    """The seeds' `encode` / `init_cache` / `decode` step by step equals the full forward (generation checks the
    cache of every pair already, against PyTorch)."""
    pair = build_pair(name, str(tmp_path))
    model = _flax_class(pair).from_pretrained(pair.directory)
    inputs, ids = numpy_inputs(pair), pair.decoder_input_ids.numpy()
    full = np.asarray(model(**inputs, decoder_input_ids=ids).logits)
    mask = inputs.get("attention_mask")
    encoded = model.encode(inputs[model.main_input_name], attention_mask=mask)
    cache = model.init_cache(ids.shape[0], ids.shape[1], encoded)
    steps = []
    for t in range(ids.shape[1]):
        out = model.decode(ids[:, t : t + 1], encoded, encoder_attention_mask=mask, past_key_values=cache)
        cache = out.past_key_values
        steps.append(np.asarray(out.logits[:, 0]))
    assert np.abs(np.stack(steps, 1) - full).max() <= 1e-5


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    pair = build_pair("vit-gpt2", str(tmp_path / "pt"), seed=3)
    model = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory)
    model.save_pretrained(tmp_path / "jax")
    original, written = load_file(f"{pair.directory}/model.safetensors"), load_file(tmp_path / "jax/model.safetensors")
    assert sorted(written) == sorted(original)  # the same keys (tied lm_head left out, as transformers saves)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key])
    reloaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path / "jax")
    for name, tensor in pair.torch_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert json.loads((tmp_path / "jax/config.json").read_text())["model_type"] == "vision-encoder-decoder"


def test_optax_training_lowers_loss_and_loads_in_pytorch(tmp_path):
    """A few Adam steps with dropout on: the loss falls; the trained weights give PyTorch the same logits."""
    decoder = gpt2_config(**{**GPT2_NO_DROPOUT, "resid_pdrop": 0.1})
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), decoder)
    model = FlaxVisionEncoderDecoderModel(config, seed=1)
    pixels = np.random.default_rng(0).normal(size=(4, 3, 30, 30)).astype(np.float32)
    labels = np.random.default_rng(1).integers(3, 99, (4, 6))
    labels[0, -2:] = -100

    def loss_fn(params, rng):
        return model(pixels, labels=labels, params=params, dropout_rng=rng, train=True).loss

    optimizer = optax.adam(3e-3)
    params, state = model.params, optimizer.init(model.params)
    eval_loss = float(model(pixels, labels=labels, params=params).loss)
    for step in range(8):
        grads = jax.grad(loss_fn)(params, jax.random.key(step))
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(model(pixels, labels=labels, params=params).loss) < eval_loss - 0.3
    model.params = params
    model.save_pretrained(tmp_path)
    torch_model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    ids = labels.clip(0)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(pixels), decoder_input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.asarray(model(pixels, decoder_input_ids=ids).logits) - expected).max() <= 1e-5
    # The loss is PyTorch's: labels shifted right, -100 ignored.
    with torch.no_grad():
        torch_loss = torch_model(torch.from_numpy(pixels), labels=torch.from_numpy(labels)).loss.item()
    assert abs(float(model(pixels, labels=labels).loss) - torch_loss) <= 1e-5


def test_text_encoder_mask_is_honoured(tmp_path):
    """Tokens under attention_mask=0 change nothing: not the encoder states, not the decoder's cross-attention."""
    pair = build_pair("bert-gpt2", str(tmp_path))
    model = FlaxEncoderDecoderModel.from_pretrained(pair.directory)
    inputs, ids = numpy_inputs(pair), pair.decoder_input_ids.numpy()
    changed = inputs["input_ids"].copy()
    changed[1, -3:] = (changed[1, -3:] + 7) % 99
    a = np.asarray(model(**inputs, decoder_input_ids=ids).logits)
    b = np.asarray(model(changed, attention_mask=inputs["attention_mask"], decoder_input_ids=ids).logits)
    np.testing.assert_array_equal(a, b)
    unmasked = np.asarray(model(changed, decoder_input_ids=ids).logits)
    assert np.abs(unmasked[1] - a[1]).max() > 1e-3  # without the mask, the padded tokens do count


def test_bfloat16_computation_stays_close(tmp_path):
    pair = build_pair("vit-bert", str(tmp_path))
    full = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory)
    half = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory, dtype=jnp.bfloat16)
    inputs, ids = numpy_inputs(pair), pair.decoder_input_ids.numpy()
    a, b = (np.asarray(m(**inputs, decoder_input_ids=ids).logits) for m in (full, half))
    assert half.params["decoder"]["cls"]["predictions"]["bias"].dtype == jnp.float32  # parameters stay float32
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.8


def test_sampling(tmp_path):
    pair = build_pair("vit-gpt2", str(tmp_path))
    model = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory)
    inputs = numpy_inputs(pair)
    greedy = np.asarray(model.generate(**inputs, max_new_tokens=8).sequences)
    top1 = model.generate(**inputs, max_new_tokens=8, do_sample=True, top_k=1, prng_key=jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(top1.sequences), greedy)
    draws = [np.asarray(model.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=2.0,
                                       prng_key=jax.random.key(s)).sequences) for s in (1, 1, 2)]  # fmt: skip
    np.testing.assert_array_equal(draws[0], draws[1])  # the key decides
    assert not np.array_equal(draws[0], draws[2])
    # top_k=3: every first sampled token is one of the 3 most likely.
    first = np.asarray(model(**inputs, decoder_input_ids=greedy[:, :1]).logits)[:, 0]
    allowed = np.argsort(-first, axis=-1)[:, :3]
    for s in range(3):
        out = np.asarray(model.generate(**inputs, max_new_tokens=1, do_sample=True, top_k=3,
                                        prng_key=jax.random.key(s)).sequences)  # fmt: skip
        assert all(out[b, 1] in allowed[b] for b in range(2))
    with pytest.raises(ValueError, match="prng_key"):
        model.generate(**inputs, do_sample=True)


def test_from_encoder_decoder_pretrained_follows_pytorch(tmp_path):
    """The seeds' call with `*_from_pt` flags: the same weights as the PyTorch class built from the same parts."""
    import transformers

    randomize(transformers.ViTModel(vit_config()), seed=5, std=0.25).save_pretrained(tmp_path / "vit")
    randomize(transformers.GPT2LMHeadModel(gpt2_config()), seed=6, std=0.25).save_pretrained(tmp_path / "gpt2")
    torch.manual_seed(0)
    expected = splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "vit", tmp_path / "gpt2",
                                                                                  decoder_n_layer=2)  # fmt: skip
    torch.manual_seed(0)
    model = FlaxVisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "vit", tmp_path / "gpt2", encoder_from_pt=True, decoder_from_pt=True, decoder_n_layer=2
    )
    pixels = np.random.default_rng(0).normal(size=(1, 3, 30, 30)).astype(np.float32)
    ids = np.array([[1, 5, 6]])
    with torch.no_grad():
        ref = expected.eval()(torch.from_numpy(pixels), decoder_input_ids=torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.asarray(model(pixels, decoder_input_ids=ids).logits) - ref).max() <= 1e-5


def test_loud_failures(tmp_path):
    pair = build_pair("vit-gpt2", str(tmp_path / "ok"))
    model = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory)
    with pytest.raises(NotImplementedError, match="repetition_penalty=1.3"):
        model.generate(**numpy_inputs(pair), repetition_penalty=1.3)
    with pytest.raises(ValueError, match=r"pixel_values of size \(16, 16\).*image_size=30"):
        model(np.zeros((1, 3, 16, 16), np.float32), decoder_input_ids=np.array([[1]]))
    with pytest.raises(ValueError, match=r"labels contains id 99, outside the decoder vocabulary \[0, 99\)"):
        model(np.zeros((1, 3, 30, 30), np.float32), labels=np.array([[5, 99, -100]]))  # JAX would clamp it
    with pytest.raises(TypeError, match="not generation settings"):
        model.generate(**numpy_inputs(pair), num_beam=3)
    swin = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        __import__("tiny").swin_config(), gpt2_config()
    )
    with pytest.raises(
        ValueError, match=r"model_type=.swin. has no JAX implementation.*\[.bert., .deit., .roberta., .vit.\]"
    ):
        FlaxVisionEncoderDecoderModel(swin)
    # A checkpoint of another shape: the keys are named.
    other = build_pair("vit-bert", str(tmp_path / "other"))
    config = splice.VisionEncoderDecoderConfig.from_pretrained(pair.directory)
    with pytest.raises(ValueError, match=r"does not fit.*missing \['decoder\.transformer"):
        FlaxVisionEncoderDecoderModel.from_pretrained(other.directory, config=config)


@pytest.mark.slow  # a fresh interpreter (`-m slow`, .ci/run's own step)
def test_import_splice_imports_neither_jax_nor_tensorflow():
    code = (
        "import sys, splice; print('jax' in sys.modules, 'tensorflow' in sys.modules, splice.FlaxEncoderDecoderModel)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False <class 'splice.flax.modeling.FlaxEncoderDecoderModel'>")


def test_compiled_functions_are_shared_by_models_of_one_architecture(tmp_path):
    """A second model of the same configuration (another seed, a reload) reuses the first one's compilations (cached
    per architecture, dtype and static arguments, not per instance); its results are those of its own weights."""
    import functools

    from splice.flax.modeling import _forward

    pair = build_pair("vit-gpt2", str(tmp_path))
    first = FlaxVisionEncoderDecoderModel.from_pretrained(pair.directory)
    second = FlaxVisionEncoderDecoderModel(first.config, seed=7)
    inputs, ids = numpy_inputs(pair), pair.decoder_input_ids.numpy()
    first(**inputs, decoder_input_ids=ids)
    first.generate(**inputs, max_new_tokens=4)
    compilations = {key: fn._cache_size() for key, fn in first._compiled.items()}
    second(**inputs, decoder_input_ids=ids)
    second.generate(**inputs, max_new_tokens=4)
    assert first._compiled.keys() == second._compiled.keys()
    assert all(second._compiled[key] is fn for key, fn in first._compiled.items())
    # No new compilation for the second model (other tests may have compiled other shapes before: count the change).
    assert {key: fn._cache_size() for key, fn in second._compiled.items()} == compilations
    forward = first._compiled[("forward", first.dtype, (("train", False),))]
    # Results: the second model's weights, exactly as a function compiled for that model alone gives them.
    alone = jax.jit(functools.partial(_forward, second._graphdef, second.dtype, train=False))
    expected = alone(second.params, inputs["pixel_values"], None, ids, None, None, None)[0]
    np.testing.assert_array_equal(np.asarray(second(**inputs, decoder_input_ids=ids).logits), np.asarray(expected))
    assert np.abs(np.asarray(expected) - np.asarray(first(**inputs, decoder_input_ids=ids).logits)).max() > 1e-3
    # Another architecture (one more decoder layer) compiles its own.
    other_config = splice.VisionEncoderDecoderConfig.from_dict(first.config.to_dict())
    other_config.decoder.n_layer += 1
    other = FlaxVisionEncoderDecoderModel(other_config)
    other(**inputs, decoder_input_ids=ids)
    assert other._compiled[("forward", other.dtype, (("train", False),))] is not forward


def test_init_weights_draws_only_what_params_leaves_out():
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), gpt2_config())
    model = FlaxVisionEncoderDecoderModel(config, seed=0)
    first, second = model.init_weights(jax.random.PRNGKey(1)), model.init_weights(jax.random.PRNGKey(2))

    def embeddings(params):
        return params["decoder"]["transformer"]["wte"]["weight"]

    def pooler(params):
        return params["encoder"]["pooler"]["dense"]["weight"]

    assert not np.allclose(embeddings(first), embeddings(second))
    merged = model.init_weights(jax.random.PRNGKey(2), params={"decoder": {"transformer": {"wte": {"weight":
                                embeddings(first)}}}})  # fmt: skip
    np.testing.assert_array_equal(embeddings(merged), embeddings(first))  # given: kept
    np.testing.assert_array_equal(pooler(merged), pooler(second))  # missing: drawn from the key
