"""What changes between transformers releases: the cache's name, deprecation-free calls, the guard that makes a cache
that does not advance loud, and transformers' own decoder-mask rule for the text composite."""

import logging
import warnings

import pytest
import torch
import transformers
from tiny import (
    BOS,
    PAD,
    bert_decoder_config,
    bert_encoder_config,
    gpt2_config,
    labels,
    llama_config,
    pixel_values,
    randomize,
    text_inputs,
    vit_config,
)
from transformers.cache_utils import DynamicCache

import splice
from splice import _compat


def _vision_model(decoder_config, **kwargs):
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), decoder_config, decoder_start_token_id=BOS, pad_token_id=PAD, **kwargs
    )
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


@pytest.fixture(params=["native", "injected", "prefix"])
def model(request):
    decoder = gpt2_config() if request.param == "native" else llama_config()
    model = _vision_model(decoder, conditioning=request.param)
    return model


def test_cache_name_follows_the_installed_release():
    fields = transformers.modeling_outputs.Seq2SeqLMOutput.__dataclass_fields__
    assert _compat.CACHE_NAME in fields
    # transformers 5.24 renamed the field; a release has one name or the other, never both as fields.
    assert ("cache" in fields) != ("past_key_values" in fields)


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_forward_takes_the_cache_under_either_name_and_returns_it_under_the_current_one(model, name):
    images = pixel_values(model.config.encoder, batch=2)
    start = torch.full((2, 1), BOS)
    first = model(pixel_values=images, decoder_input_ids=start, use_cache=True)
    cache = _compat.output_cache(first)
    assert cache is not None and cache.get_seq_length() > 0
    step = model(pixel_values=images, decoder_input_ids=torch.full((2, 1), 5), **{name: cache}, use_cache=True)
    assert _compat.output_cache(step) is cache
    # The cached step equals the uncached forward over both tokens.
    full = model(pixel_values=images, decoder_input_ids=torch.cat([start, torch.full((2, 1), 5)], 1))
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-5, rtol=1e-5)


def test_both_cache_names_at_once_is_an_error(model):
    images = pixel_values(model.config.encoder, batch=1)
    with pytest.raises(ValueError, match="not both"):
        model(
            pixel_values=images,
            decoder_input_ids=torch.full((1, 1), BOS),
            cache=DynamicCache(),
            past_key_values=DynamicCache(),
        )


def test_a_cache_under_an_unknown_name_is_an_error_not_ignored(model):
    images = pixel_values(model.config.encoder, batch=1)
    with pytest.raises(TypeError, match=r"got a cache as \['kv_cache'\].*Compatibility"):
        model(pixel_values=images, decoder_input_ids=torch.full((1, 1), BOS), kv_cache=DynamicCache())


def test_generate_uses_no_deprecated_argument(model, caplog):
    """No FutureWarning and no transformers deprecation log from splice's own calls (the rename once broke it)."""
    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    transformers.utils.logging.enable_propagation()
    images = pixel_values(model.config.encoder, batch=2)
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            model.generate(images, max_new_tokens=4, num_beams=2)
            model.generate(images, max_new_tokens=4)
    finally:
        transformers.utils.logging.disable_propagation()
    deprecations = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
    deprecations += [r.getMessage() for r in caplog.records if "deprecat" in r.getMessage().lower()]
    assert deprecations == []


def test_a_cache_that_does_not_advance_fails_loudly(model, monkeypatch):
    """Simulate the 5.24 failure: the cache never reaches the decoder, so every step would see one token only."""
    forward = type(model).forward

    def forgetful(self, *args, **kwargs):
        _compat.pop_cache(kwargs)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forgetful)
    images = pixel_values(model.config.encoder, batch=2)
    with pytest.raises(RuntimeError, match=rf"transformers {transformers.__version__}.*cache holds.*Compatibility"):
        model.generate(images, max_new_tokens=5, min_new_tokens=5)


def test_cached_greedy_equals_teacher_forced_argmax(model):
    """The property the 5.24 bug broke: each generated token is the argmax of a full forward over its prefix."""
    images = pixel_values(model.config.encoder, batch=2)
    out = model.generate(images, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
    logits = model(pixel_values=images, decoder_input_ids=out.sequences[:, :-1]).logits  # [B, T, V]
    assert len(out.logits) > 1
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, logits[:, step], atol=1e-4, rtol=1e-4)


def _bert2bert_pair():
    """transformers' EncoderDecoderModel and splice's, same weights."""
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        bert_encoder_config(), bert_decoder_config(), decoder_start_token_id=BOS, pad_token_id=PAD
    )
    oracle = randomize(transformers.EncoderDecoderModel(config)).eval()
    ours = splice.EncoderDecoderModel(splice.EncoderDecoderConfig(**config.to_dict())).eval()
    ours.load_state_dict(oracle.state_dict())
    return oracle, ours


def test_text_composite_masks_pad_ids_in_labels_like_transformers():
    oracle, ours = _bert2bert_pair()
    inputs = text_inputs(batch=2)
    target = labels(batch=2)
    target[1, 4:] = PAD  # padded with the pad id, not -100: these positions count in the loss and are masked
    with torch.no_grad():
        expected = oracle(**inputs, labels=target).loss
        got = ours(**inputs, labels=target).loss
    assert torch.equal(got, expected)
    # The general rule (mask only after -100 labels) would differ here: the masks matter.
    with torch.no_grad():
        unmasked = ours(**inputs, labels=target, decoder_attention_mask=torch.ones_like(target)).loss
    assert not torch.allclose(unmasked, expected)


def test_start_token_equal_to_pad_stays_visible():
    """With decoder_start_token_id == pad_token_id transformers also masks position 0; splice keeps it (docstring)."""
    oracle, ours = _bert2bert_pair()
    for model in (oracle, ours):
        model.config.decoder_start_token_id = PAD
    ours._sync_generation_config()
    inputs = text_inputs(batch=2)
    target = labels(batch=2)
    target[1, 4:] = PAD
    decoder_input_ids = ours.prepare_decoder_input_ids_from_labels(target)
    mask = (decoder_input_ids != PAD).long()
    mask[:, 0] = 1
    with torch.no_grad():
        expected = oracle(**inputs, labels=target, decoder_attention_mask=mask).loss
        got = ours(**inputs, labels=target).loss
    assert torch.equal(got, expected)
