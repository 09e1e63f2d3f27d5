"""`cross_attention_hidden_size` means one thing everywhere, as transformers defines it: the width of the encoder
states the decoder's cross-attention reads. Unset, encoder states of another width pass through `enc_to_dec_proj`;
set, it must equal the encoder's width and no projection is added. PyTorch, JAX and the docstring share one rule
(`splice.encoders.enc_to_dec_projection`)."""

import pytest
import torch
import transformers
from tiny import EOS, PAD, gpt2_config, pixel_values, randomize, trocr_config, vit_config

import splice
from splice.encoders import enc_to_dec_projection

ENC = 32  # the tiny ViT's width


def _config(decoder: transformers.PreTrainedConfig) -> splice.VisionEncoderDecoderConfig:
    return splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), decoder, decoder_start_token_id=EOS, pad_token_id=PAD
    )


@pytest.mark.parametrize(
    ("cross_width", "dec_width", "expected"),
    [(None, ENC, None), (None, 48, (ENC, 48)), (ENC, ENC, None), (ENC, 48, None)],
)
def test_the_rule(cross_width, dec_width, expected):
    decoder = trocr_config(d_model=dec_width, cross_attention_hidden_size=cross_width)
    assert enc_to_dec_projection(vit_config(), decoder) == expected


def test_a_width_other_than_the_encoders_is_refused_in_pytorch_and_jax():
    config = _config(gpt2_config(cross_attention_hidden_size=64))
    with pytest.raises(ValueError, match="cross_attention_hidden_size=64, but the encoder's hidden size is 32"):
        splice.VisionEncoderDecoderModel(config)
    with pytest.raises(ValueError, match="cross_attention_hidden_size=64, but the encoder's hidden size is 32"):
        splice.FlaxVisionEncoderDecoderModel(config)


@pytest.mark.parametrize("cross_width", [None, ENC])
def test_trocr_style_widths_match_transformers(cross_width):
    # TrOCR: a decoder of width 48 whose cross-attention reads the encoder's 32-wide states (cross width = encoder
    # width != decoder width: no projection), or, unset, a projection 32 -> 48. transformers is the oracle.
    config = _config(trocr_config(d_model=48, cross_attention_hidden_size=cross_width))
    torch.manual_seed(0)
    oracle = randomize(transformers.VisionEncoderDecoderModel(config=transformers.VisionEncoderDecoderConfig(
        **config.to_dict()))).eval()  # fmt: skip
    model = splice.VisionEncoderDecoderModel(config).eval()
    assert hasattr(model, "enc_to_dec_proj") == hasattr(oracle, "enc_to_dec_proj") == (cross_width is None)
    model.load_state_dict(oracle.state_dict())
    pixels, ids = pixel_values(config.encoder), torch.tensor([[EOS, 5, 6], [EOS, 7, 8]])
    with torch.no_grad():
        expected = oracle(pixel_values=pixels, decoder_input_ids=ids).logits
        torch.testing.assert_close(
            model(pixel_values=pixels, decoder_input_ids=ids).logits, expected, atol=1e-5, rtol=0
        )


def test_jax_takes_the_encoders_width_as_cross_width():
    # Cross width = encoder width = decoder width: no projection in either framework (JAX once demanded the decoder's
    # width instead); cross width = encoder width != decoder width: JAX's GPT-2 reads its own width only, so it says so.
    config = _config(gpt2_config(cross_attention_hidden_size=ENC))
    assert "enc_to_dec_proj" not in splice.FlaxVisionEncoderDecoderModel(config).params
    assert "enc_to_dec_proj" in splice.FlaxVisionEncoderDecoderModel(_config(gpt2_config(n_embd=48))).params
    wide = _config(gpt2_config(n_embd=48, cross_attention_hidden_size=ENC))
    with pytest.raises(ValueError, match="reads states of its own width 48"):
        splice.FlaxVisionEncoderDecoderModel(wide)
