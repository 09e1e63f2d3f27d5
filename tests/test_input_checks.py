"""Bad model input is a ValueError naming the argument, the value and the fix (never a deep IndexError or NaN)."""

import pytest
import torch
import transformers as T
from tiny import BOS, PAD, bert_encoder_config, gpt2_config, labels, pixel_values, randomize, text_inputs, vit_config

import splice


def _vision(**kwargs):
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), gpt2_config(), decoder_start_token_id=BOS, pad_token_id=PAD, **kwargs
    )
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


def test_generate_beyond_the_decoder_positions_is_an_error():
    model = _vision()  # GPT-2 with 64 learned positions
    images = pixel_values(model.config.encoder, batch=1)
    with pytest.raises(ValueError, match=r"max_new_tokens=500 = 501 positions.*takes 64.*at most 63"):
        model.generate(images, max_new_tokens=500)
    assert model.generate(images, max_new_tokens=63, min_new_tokens=63).shape[1] == 64  # the limit itself works


@pytest.mark.parametrize(("name", "value"), [("num_beams", 0), ("max_new_tokens", 0), ("num_beams", -2)])
def test_generate_counts_below_one_are_errors(name, value):
    model = _vision()
    with pytest.raises(ValueError, match=rf"{name}={value}; it must be an integer >= 1"):
        model.generate(pixel_values(model.config.encoder, batch=1), **{name: value})


def test_encoder_input_ids_outside_the_encoder_vocabulary():
    config = splice.EncoderDecoderConfig.from_encoder_decoder_configs(
        bert_encoder_config(), gpt2_config(), decoder_start_token_id=BOS, pad_token_id=PAD
    )
    model = splice.EncoderDecoderModel(config).eval()
    inputs = text_inputs(batch=2)
    inputs["input_ids"][0, 1] = 500
    with pytest.raises(ValueError, match=r"input_ids contains id 500, outside the encoder vocabulary \[0, 99\)"):
        model(**inputs, labels=labels(batch=2))


def test_raw_pixels_are_refused_and_unnormalised_floats_warned():
    model = _vision()
    raw = (torch.rand(1, 3, 30, 30) * 255).to(torch.uint8)
    with pytest.raises(ValueError, match="pixel_values has dtype torch.uint8: raw pixels"):
        model.generate(raw, max_new_tokens=2)
    with pytest.warns(UserWarning, match="look like 0-255 pixels"):
        model.generate(raw.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match="raw pixels"):  # forward checks the dtype too
        model(pixel_values=raw, decoder_input_ids=torch.full((1, 1), BOS))


def test_labels_all_ignored_give_zero_loss_not_nan():
    model = _vision().train()
    images = pixel_values(model.config.encoder, batch=2)
    ignored = torch.full((2, 5), -100)
    loss = model(pixel_values=images, labels=ignored).loss
    assert loss.item() == 0.0
    loss.backward()  # and gradients are finite
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    some = ignored.clone()
    some[0, :2] = torch.tensor([5, 6])
    mean = model(pixel_values=images, labels=some).loss
    full = model(pixel_values=images, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(some)).logits
    expected = torch.nn.functional.cross_entropy(full[0, :2], torch.tensor([5, 6]))
    torch.testing.assert_close(mean, expected)


def test_an_encoder_given_as_the_decoder_is_one_clear_error(tmp_path):
    T.BertModel(bert_encoder_config()).save_pretrained(tmp_path / "bert")
    T.ViTModel(vit_config()).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"'vit' model, which has no AutoModelForCausalLM class.*order"):
        splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "bert", tmp_path / "vit")


def test_an_unloadable_part_names_its_path(tmp_path):
    with pytest.raises(OSError, match=r"Cannot load the encoder 'org/not-here': not found locally.*HF_HUB_OFFLINE"):
        splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained("org/not-here", "org/also-not")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="directory exists but has no config.json"):
        splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "empty", "org/also-not")
