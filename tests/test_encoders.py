"""Encoder families beyond ViT/BERT: each composes with a decoder, trains, generates and round-trips a checkpoint.

Vision (ViT, DeiT, BEiT, Swin, ConvNeXt, ResNet, DINOv2, SigLIP vision, full CLIP / SigLIP dual towers), text (BERT,
RoBERTa, the T5 encoder) and speech (Wav2Vec2, the Whisper encoder) encoders are joined to GPT-2 (native
cross-attention) and to a tiny Llama (no cross-attention of its own: `auto` resolves to injected). The speech composite
is checked against transformers' `SpeechEncoderDecoderModel` on identical weights, in both checkpoint directions.
Everything is tiny, random and offline.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
import transformers as T
from tiny import (
    BERT_NO_DROPOUT,
    BOS,
    EOS,
    PAD,
    VOCAB,
    beit_config,
    bert_decoder_config,
    bert_encoder_config,
    deit_config,
    llama_config,
    open_gates,
    randomize,
    roberta_encoder_config,
    swin_config,
    vit_config,
)
from tiny import decoder_config as family_config
from transformers.utils import logging as hf_logging

import splice

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

BATCH = 2
IMAGE = 32
WAVE_SAMPLES = 1000  # Wav2Vec2 below: 3 convs (kernel 8, stride 4) -> 14 frames
WAVE_REAL = 600  # real samples of the padded row -> 8 frames
MEL_BINS, SOURCE_POSITIONS = 8, 16  # Whisper: input_features [B, 8, 32] -> 16 frames
LABELS = torch.randint(3, VOCAB, (BATCH, 5), generator=torch.Generator().manual_seed(7))


pytestmark = pytest.mark.usefixtures("one_thread")


# -- configs -----------------------------------------------------------------------------------------------------------

_VIT = {"image_size": IMAGE, "patch_size": 8}  # on top of the tiny ViT
_CLIP_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
_CLIP_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=IMAGE, patch_size=8
)


def clip_config() -> T.CLIPConfig:
    return T.CLIPConfig(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION, projection_dim=16)


def siglip_config() -> T.SiglipConfig:
    return T.SiglipConfig(text_config=_CLIP_TEXT, vision_config=_CLIP_VISION)


def wav2vec2_config() -> T.Wav2Vec2Config:
    # Layer-norm feature extractor (as in the large checkpoints): group norm would mix padded samples into every frame.
    return T.Wav2Vec2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(16, 16, 16),
        conv_stride=(4, 4, 4),
        conv_kernel=(8, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )


def whisper_config() -> T.WhisperConfig:
    return T.WhisperConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        num_mel_bins=MEL_BINS,
        max_source_positions=SOURCE_POSITIONS,
        max_target_positions=32,
        dropout=0.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
    )


def t5_config() -> T.T5Config:
    return T.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=PAD
    )


DECODERS = {"gpt2": functools.partial(family_config, "gpt2"), "llama": llama_config}  # GPT-2 without dropout

_WIDTH_32 = {"hidden_size": 32, "intermediate_size": 37}  # the tiny RoBERTa encoder is 24 wide
# name -> (encoder config, input kind, class of the encoder splice uses)
FAMILIES = {
    "vit": (lambda: vit_config(**_VIT), "image", "ViTModel"),
    "deit": (lambda: deit_config(**_VIT), "image", "DeiTModel"),
    "beit": (lambda: beit_config(**_VIT), "image", "BeitModel"),
    "swin": (swin_config, "image", "SwinModel"),
    "convnext": (
        lambda: T.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=IMAGE),
        "image",
        "ConvNextModel",
    ),
    "resnet": (
        lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
        "image",
        "ResNetModel",
    ),
    "dinov2": (
        lambda: T.Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=IMAGE, patch_size=8
        ),
        "image",
        "Dinov2Model",
    ),
    "siglip-vision": (lambda: T.SiglipVisionConfig(**_CLIP_VISION), "image", "SiglipVisionModel"),
    "clip-dual": (clip_config, "image", "CLIPVisionModel"),
    "siglip-dual": (siglip_config, "image", "SiglipVisionModel"),
    "bert": (lambda: bert_encoder_config(**BERT_NO_DROPOUT), "text", "BertModel"),
    "roberta": (lambda: roberta_encoder_config(**_WIDTH_32, **BERT_NO_DROPOUT), "text", "RobertaModel"),
    "t5": (t5_config, "text", "T5Stack"),
    "wav2vec2": (wav2vec2_config, "wave", "Wav2Vec2Model"),
    "whisper": (whisper_config, "mel", "WhisperEncoder"),
}
MAIN_INPUT = {"image": "pixel_values", "text": "input_ids", "wave": "input_values", "mel": "input_features"}
VISION_FAMILIES = [name for name, (_, kind, _) in FAMILIES.items() if kind == "image"]


# -- inputs ------------------------------------------------------------------------------------------------------------


def make_inputs(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Encoder inputs for a kind; text and wave come with an attention mask whose second row is padded."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "image":
        return {"pixel_values": torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)}
    if kind == "text":
        input_ids = torch.randint(3, VOCAB, (BATCH, 8), generator=gen)
        attention_mask = torch.ones(BATCH, 8, dtype=torch.long)
        attention_mask[1, 5:] = 0
        input_ids[1, 5:] = PAD
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    if kind == "wave":
        attention_mask = torch.ones(BATCH, WAVE_SAMPLES, dtype=torch.long)
        attention_mask[1, WAVE_REAL:] = 0
        input_values = torch.randn(BATCH, WAVE_SAMPLES, generator=gen)
        input_values[1, WAVE_REAL:] = 0.0
        return {"input_values": input_values, "attention_mask": attention_mask}
    return {"input_features": torch.randn(BATCH, MEL_BINS, 2 * SOURCE_POSITIONS, generator=gen)}


def perturbed(kind: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs with a real (unpadded) part of row 0 changed."""
    out = dict(inputs)
    name = MAIN_INPUT[kind]
    value = inputs[name].clone()
    if kind == "text":
        value[0, 1] = 3 + (value[0, 1] - 3 + 1) % (VOCAB - 3)
    else:
        value[0] = value[0] + 1.0
    out[name] = value
    return out


def build(family: str, decoder: str, seed: int = 0) -> splice.SpliceModel:
    encoder_config, _, _ = FAMILIES[family]
    torch.manual_seed(seed)
    config = splice.SpliceConfig.from_encoder_decoder_configs(encoder_config(), DECODERS[decoder]())
    model = splice.SpliceModel(config).eval()
    if model.config.conditioning == "injected":
        open_gates(model)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# -- 1. every family composes, trains, generates and round-trips -------------------------------------------------------


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_composes_generates_and_round_trips(family, decoder, tmp_path):
    _, kind, encoder_class = FAMILIES[family]
    model = build(family, decoder)
    inputs = make_inputs(kind)

    # GPT-2 has cross-attention of its own; Llama has none, so "auto" injects splice's.
    assert model.config.conditioning == ("native" if decoder == "gpt2" else "injected")
    assert type(model.encoder).__name__ == encoder_class
    assert model.main_input_name == MAIN_INPUT[kind]
    assert model.get_encoder() is model.encoder

    with torch.no_grad():
        out = model(**inputs, labels=LABELS)
        assert out.logits.shape == (BATCH, LABELS.shape[1], VOCAB)
        assert out.loss is not None and torch.isfinite(out.loss)
        # The logits depend on the encoder input.
        other = model(**perturbed(kind, inputs), labels=LABELS)
        assert max_diff(out.logits[0], other.logits[0]) > 1e-6

        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
        start = model.generation_config.decoder_start_token_id
        assert generated.shape == (BATCH, 5)
        assert (generated[:, 0] == start).all()
        # The first greedy token is the argmax of a plain forward from the start token.
        first = model(**inputs, decoder_input_ids=torch.full((BATCH, 1), start)).logits[:, -1]
        assert torch.equal(generated[:, 1], first.argmax(-1))

    model.save_pretrained(tmp_path)
    reloaded, info = splice.SpliceModel.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.conditioning == model.config.conditioning
    assert type(reloaded.encoder).__name__ == encoder_class
    assert reloaded.main_input_name == MAIN_INPUT[kind]
    with torch.no_grad():
        again = reloaded(**inputs, labels=LABELS)
    assert torch.equal(again.logits, out.logits)
    assert torch.equal(again.loss, out.loss)


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_vision_auto_is_injected_for_decoder_without_cross_attention(family):
    # Decided from the decoder config alone, before any model is built, and recorded in the config.
    encoder_config, _, _ = FAMILIES[family]
    config = splice.SpliceConfig.from_encoder_decoder_configs(encoder_config(), llama_config())
    assert config.conditioning == "injected"
    assert not getattr(config.decoder, "add_cross_attention", False)
    config = splice.SpliceConfig.from_encoder_decoder_configs(encoder_config(), DECODERS["gpt2"]())
    assert config.conditioning == "native" and config.decoder.add_cross_attention


# -- convolutional feature maps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["resnet", "convnext"])
def test_feature_maps_become_one_token_per_position(family):
    model = build(family, "gpt2")
    inputs = make_inputs("image")
    seen = {}

    def capture(module, args, kwargs):
        seen["states"] = kwargs["encoder_hidden_states"]

    handle = model.decoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(**inputs, labels=LABELS)
    finally:
        handle.remove()

    feature_map = out.encoder_last_hidden_state  # the encoder's own output, kept as [B, C, H, W]
    batch, channels, height, width = feature_map.shape
    assert (batch, channels) == (BATCH, 16) and height * width > 1
    # Width 16 differs from GPT-2's 32: splice projects the H*W tokens (row-major) to the decoder width.
    assert hasattr(model, "enc_to_dec_proj")
    states = seen["states"]
    assert states.shape == (BATCH, height * width, 32)
    with torch.no_grad():
        expected = model.enc_to_dec_proj(feature_map.permute(0, 2, 3, 1).reshape(BATCH, height * width, channels))
    torch.testing.assert_close(states, expected, rtol=0, atol=1e-6)
    # Beam search expands the 4-D map like any encoder output.
    with torch.no_grad():
        beams = model.generate(**inputs, num_beams=2, max_new_tokens=4, min_new_tokens=4)
    assert beams.shape == (BATCH, 5)


# -- dual-tower checkpoints --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tower_config, vision_class",
    [(clip_config, T.CLIPVisionModel), (siglip_config, T.SiglipVisionModel)],
    ids=["clip", "siglip"],
)
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_dual_tower_instance_contributes_its_vision_tower(tower_config, vision_class, decoder, tmp_path):
    torch.manual_seed(0)
    dual = T.AutoModel.from_config(tower_config())
    assert dual.main_input_name == "input_ids"  # the dual model reads text first; the composite reads images
    decoder_config = DECODERS[decoder]()
    if decoder == "gpt2":
        decoder_config.is_decoder = True
        decoder_config.add_cross_attention = True
    model = splice.SpliceModel(encoder=dual, decoder=T.AutoModelForCausalLM.from_config(decoder_config)).eval()

    assert isinstance(model.encoder, vision_class)
    assert model.encoder is dual.vision_model
    assert model.main_input_name == "pixel_values"
    assert model.config.encoder.model_type == dual.config.vision_config.model_type
    assert model.config.conditioning == ("native" if decoder == "gpt2" else "injected")
    # Only the vision tower is kept: no text tower, no projections, no logit scale.
    encoder_keys = {name[len("encoder.") :] for name in model.state_dict() if name.startswith("encoder.")}
    assert encoder_keys == set(dual.vision_model.state_dict())
    if model.config.conditioning == "injected":
        open_gates(model)

    pixel_values = make_inputs("image")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values, labels=LABELS)
        reference = dual.vision_model(pixel_values=pixel_values).last_hidden_state
        generated = model.generate(pixel_values, max_new_tokens=4, min_new_tokens=4)
    assert torch.isfinite(out.loss)
    assert torch.equal(out.encoder_last_hidden_state, reference)
    assert generated.shape == (BATCH, 5)

    model.save_pretrained(tmp_path)
    reloaded = splice.SpliceModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.encoder, vision_class)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixel_values, labels=LABELS).logits, out.logits)


# -- text encoders: the padding mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("family", ["bert", "roberta", "t5"])
def test_text_attention_mask_is_honoured(family, decoder):
    model = build(family, decoder)
    inputs = make_inputs("text")
    changed = dict(inputs, input_ids=inputs["input_ids"].clone())
    changed["input_ids"][1, 6] = 42  # a padded position of row 1
    with torch.no_grad():
        masked = model(**inputs, labels=LABELS).logits
        masked_changed = model(**changed, labels=LABELS).logits
        unmasked = model(input_ids=inputs["input_ids"], labels=LABELS).logits
        unmasked_changed = model(input_ids=changed["input_ids"], labels=LABELS).logits
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
        generated_changed = model.generate(**changed, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(masked, masked_changed)
    assert torch.equal(generated, generated_changed)
    # Control: without the mask the padded token is read, so the check above can fail.
    assert max_diff(unmasked[1], unmasked_changed[1]) > 1e-6


@pytest.mark.parametrize(
    "full_config, stack_class",
    [(t5_config, "T5Stack"), (whisper_config, "WhisperEncoder")],
    ids=["t5", "whisper"],
)
def test_encoder_decoder_checkpoint_contributes_its_encoder(full_config, stack_class, tmp_path):
    torch.manual_seed(0)
    full = T.AutoModel.from_config(full_config())
    model = splice.SpliceModel(encoder=full, decoder=T.AutoModelForCausalLM.from_config(llama_config())).eval()
    assert model.encoder is full.get_encoder()
    assert type(model.encoder).__name__ == stack_class
    encoder_keys = {name[len("encoder.") :] for name in model.state_dict() if name.startswith("encoder.")}
    assert encoder_keys == set(full.get_encoder().state_dict())  # no decoder weights of the seq2seq checkpoint
    open_gates(model)

    kind = "text" if stack_class == "T5Stack" else "mel"
    inputs = make_inputs(kind)
    with torch.no_grad():
        out = model(**inputs, labels=LABELS)
    assert torch.isfinite(out.loss)
    model.save_pretrained(tmp_path)
    reloaded = splice.SpliceModel.from_pretrained(tmp_path).eval()
    assert type(reloaded.encoder).__name__ == stack_class
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs, labels=LABELS).logits, out.logits)


# -- speech encoders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_wav2vec2_sample_mask_is_downsampled_to_frames(decoder):
    model = build("wav2vec2", decoder)
    inputs = make_inputs("wave")
    with torch.no_grad():
        out = model(**inputs, labels=LABELS)
    frames = out.encoder_last_hidden_state.shape[1]
    real = model.encoder._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
    assert frames == model.encoder._get_feat_extract_output_lengths(WAVE_SAMPLES) == 14
    assert real.tolist() == [14, 8]
    frame_mask = model._encoder_attention_mask(inputs["attention_mask"], out.encoder_last_hidden_state)
    expected = torch.arange(frames)[None, :] < real[:, None]
    assert torch.equal(frame_mask.bool(), expected)

    # Samples in the padded region of row 1 change nothing, in the forward and in generation...
    changed = dict(inputs, input_values=inputs["input_values"].clone())
    changed["input_values"][1, WAVE_REAL + 50 :] = 3.0
    with torch.no_grad():
        again = model(**changed, labels=LABELS)
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
        generated_changed = model.generate(**changed, max_new_tokens=4, min_new_tokens=4)
        unmasked = model(input_values=inputs["input_values"], labels=LABELS)
        unmasked_changed = model(input_values=changed["input_values"], labels=LABELS)
    assert torch.equal(again.logits, out.logits)
    assert torch.equal(generated, generated_changed)
    # ...while, without the mask, they do (so the check above can fail).
    assert max_diff(unmasked.logits[1], unmasked_changed.logits[1]) > 1e-6


def test_whisper_encoder_reads_input_features():
    model = build("whisper", "gpt2")
    inputs = make_inputs("mel")
    assert inputs["input_features"].shape == (BATCH, MEL_BINS, 2 * SOURCE_POSITIONS)
    with torch.no_grad():
        out = model(**inputs, labels=LABELS)
        direct = model.encoder(**inputs).last_hidden_state
    assert out.encoder_last_hidden_state.shape == (BATCH, SOURCE_POSITIONS, 32)
    assert torch.equal(out.encoder_last_hidden_state, direct)
    # The speech composite takes the features under `inputs` and `input_features` alike.
    torch.manual_seed(0)
    config = splice.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(whisper_config(), DECODERS["gpt2"]())
    speech = splice.SpeechEncoderDecoderModel(config).eval()
    features = inputs["input_features"]
    with torch.no_grad():
        by_inputs = speech(inputs=features, labels=LABELS).logits
        by_name = speech(input_features=features, labels=LABELS).logits
        generated = speech.generate(features, max_new_tokens=4, min_new_tokens=4)
    assert torch.equal(by_inputs, by_name)
    assert generated.shape == (BATCH, 5)


# -- 2. SpeechEncoderDecoderModel against transformers -----------------------------------------------------------------

SPEECH_DECODERS = {"bert": functools.partial(bert_decoder_config, **BERT_NO_DROPOUT), "gpt2": DECODERS["gpt2"]}


@pytest.fixture(scope="module")
def speech_pair(tmp_path_factory):
    """Builds (once per decoder, under this module's temp dir) transformers' speech composite (weights re-drawn),
    saved and loaded into splice's."""
    root = tmp_path_factory.mktemp("speech")

    @functools.cache
    def pair(decoder: str) -> SimpleNamespace:
        return _speech_pair(decoder, str(root / f"speech-{decoder}"))

    return pair


def _speech_pair(decoder: str, directory: str) -> SimpleNamespace:
    torch.manual_seed(3)
    config = T.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(wav2vec2_config(), SPEECH_DECODERS[decoder]())
    oracle = T.SpeechEncoderDecoderModel(config)
    randomize(oracle, seed=3, std=0.4)
    for cfg in (oracle.config, oracle.generation_config):
        cfg.decoder_start_token_id = BOS
        cfg.pad_token_id = PAD
    oracle.eval()
    oracle.save_pretrained(directory)
    model, info = splice.SpeechEncoderDecoderModel.from_pretrained(directory, output_loading_info=True)
    return SimpleNamespace(
        oracle=oracle, model=model.eval(), info=info, directory=directory, inputs=make_inputs("wave")
    )


@pytest.mark.parametrize("decoder", list(SPEECH_DECODERS))
def test_speech_parity_logits_and_loss(decoder, speech_pair):
    pair = speech_pair(decoder)
    assert not pair.info["missing_keys"] and not pair.info["unexpected_keys"] and not pair.info["mismatched_keys"]
    assert type(pair.model.encoder) is type(pair.oracle.encoder)
    assert pair.model.main_input_name == "inputs"
    with torch.no_grad():
        expected = pair.oracle(**pair.inputs, labels=LABELS)
        got = pair.model(**pair.inputs, labels=LABELS)
        # Same inputs under the composite's main name.
        values, mask = pair.inputs["input_values"], pair.inputs["attention_mask"]
        by_inputs = pair.model(inputs=values, attention_mask=mask, labels=LABELS)
    assert max_diff(got.logits, expected.logits) <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5
    assert torch.equal(by_inputs.logits, got.logits)
    # The padding mask matters here, so parity above covers its downsampling.
    with torch.no_grad():
        unmasked = pair.oracle(input_values=pair.inputs["input_values"], labels=LABELS)
    assert max_diff(unmasked.logits[1], expected.logits[1]) > 1e-4


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize("decoder", list(SPEECH_DECODERS))
def test_speech_parity_generation(decoder, num_beams, speech_pair):
    pair = speech_pair(decoder)
    values, mask = pair.inputs["input_values"], pair.inputs["attention_mask"]
    with torch.no_grad():
        expected = pair.oracle.generate(values, attention_mask=mask, num_beams=num_beams, max_new_tokens=8)
        got = pair.model.generate(values, attention_mask=mask, num_beams=num_beams, max_new_tokens=8)
    assert torch.equal(got, expected)
    assert got.shape[1] > 2
    assert len(set(got[:, 1:].flatten().tolist())) > 1, "degenerate generation: one id everywhere"


@pytest.mark.parametrize("decoder", list(SPEECH_DECODERS))
def test_speech_checkpoint_loads_in_transformers(decoder, tmp_path, speech_pair):
    pair = speech_pair(decoder)
    pair.model.save_pretrained(tmp_path)
    oracle, info = T.SpeechEncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    oracle.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        expected = pair.model(**pair.inputs, labels=LABELS).logits
        got = oracle(**pair.inputs, labels=LABELS).logits
    assert torch.equal(got, expected)


def test_speech_from_encoder_decoder_pretrained(tmp_path):
    torch.manual_seed(5)
    encoder = T.Wav2Vec2Model(wav2vec2_config())
    decoder = T.GPT2LMHeadModel(DECODERS["gpt2"]())
    encoder.save_pretrained(tmp_path / "enc")
    decoder.save_pretrained(tmp_path / "dec")

    model = splice.SpeechEncoderDecoderModel.from_encoder_decoder_pretrained(
        str(tmp_path / "enc"), str(tmp_path / "dec")
    ).eval()
    assert isinstance(model.config, splice.SpeechEncoderDecoderConfig)
    assert isinstance(model.encoder, T.Wav2Vec2Model)
    assert model.config.conditioning == "native" and model.config.decoder.add_cross_attention
    # Pretrained weights are loaded, not re-drawn.
    for name, param in encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], param), name
    decoder_state = model.decoder.state_dict()
    for name, param in decoder.state_dict().items():
        assert torch.equal(decoder_state[name], param), name
    assert any("crossattention" in name for name in decoder_state)

    inputs = make_inputs("wave")
    with torch.no_grad():
        out = model(**inputs, labels=LABELS)
        generated = model.generate(inputs["input_values"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert torch.isfinite(out.loss)
    assert generated.shape[0] == BATCH and 2 <= generated.shape[1] <= 5

    # Same keys as transformers' composite of these parts: the state dict loads strictly and gives the same logits.
    config = T.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(wav2vec2_config(), DECODERS["gpt2"]())
    config.decoder_start_token_id = model.config.decoder_start_token_id
    config.pad_token_id = model.config.pad_token_id
    oracle = T.SpeechEncoderDecoderModel(config)
    oracle.load_state_dict(model.state_dict(), strict=True)
    oracle.eval()
    with torch.no_grad():
        assert max_diff(oracle(**inputs, labels=LABELS).logits, out.logits) <= 1e-5


def test_freeze_feature_encoder():
    torch.manual_seed(0)
    config = splice.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(wav2vec2_config(), DECODERS["gpt2"]())
    model = splice.SpeechEncoderDecoderModel(config)
    conv = dict(model.encoder.feature_extractor.named_parameters())
    assert conv and all(p.requires_grad for p in model.parameters())

    model.freeze_feature_encoder()
    assert all(not p.requires_grad for p in conv.values())
    conv_ids = {id(p) for p in conv.values()}
    rest = [p for p in model.parameters() if id(p) not in conv_ids]
    assert rest and all(p.requires_grad for p in rest)

    model.train()
    inputs = make_inputs("wave")
    model(**inputs, labels=LABELS).loss.backward()
    assert all(p.grad is None for p in conv.values())
    assert model.encoder.feature_projection.projection.weight.grad is not None
    assert model.encoder.encoder.layers[0].attention.q_proj.weight.grad is not None


# -- 3. a dual-tower CLIP checkpoint through from_encoder_decoder_pretrained -------------------------------------------


def test_clip_checkpoint_dir_uses_vision_tower(tmp_path):
    torch.manual_seed(0)
    clip = T.CLIPModel(clip_config())
    clip.save_pretrained(tmp_path / "clip")
    T.GPT2LMHeadModel(DECODERS["gpt2"]()).save_pretrained(tmp_path / "gpt2")

    model = splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "gpt2")
    ).eval()
    assert isinstance(model.encoder, T.CLIPVisionModel)
    assert model.main_input_name == "pixel_values"
    assert model.config.encoder.model_type == "clip_vision_model"
    # The vision tower's pretrained weights, not fresh ones.
    vision_state = clip.vision_model.state_dict()
    encoder_state = model.encoder.state_dict()
    assert set(encoder_state) == set(vision_state)
    for name, param in vision_state.items():
        assert torch.equal(encoder_state[name], param), name

    pixel_values = make_inputs("image")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixel_values, labels=LABELS)
        generated = model.generate(pixel_values, max_new_tokens=4, min_new_tokens=4)
    assert torch.isfinite(out.loss)
    assert generated.shape == (BATCH, 5)
    with torch.no_grad():
        reference = clip.vision_model(pixel_values=pixel_values).last_hidden_state
    assert torch.equal(out.encoder_last_hidden_state, reference)

    model.save_pretrained(tmp_path / "captioner")
    reloaded, info = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path / "captioner", output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(reloaded.encoder, T.CLIPVisionModel)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixel_values, labels=LABELS).logits, out.logits)
        assert torch.equal(reloaded.generate(pixel_values, max_new_tokens=4, min_new_tokens=4), generated)
    # The checkpoint is in transformers' format: its own composite reads it the same way.
    oracle = T.VisionEncoderDecoderModel.from_pretrained(tmp_path / "captioner").eval()
    assert isinstance(oracle.encoder, T.CLIPVisionModel)
    with torch.no_grad():
        assert max_diff(oracle(pixel_values=pixel_values, labels=LABELS).logits, out.logits) <= 1e-5


def test_wav2vec2_adapter_output_width_is_used():
    import transformers as T

    import splice

    enc = T.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_stride=(4, 4),
        conv_kernel=(8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        add_adapter=True,
        output_hidden_size=24,
        adapter_stride=2,
        num_adapter_layers=1,
    )
    dec = bert_decoder_config(hidden_size=24, num_hidden_layers=1)
    model = splice.SpeechEncoderDecoderModel(splice.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
    assert not hasattr(model, "enc_to_dec_proj")  # adapter output (24) already matches the decoder (24)
    logits = model(inputs=torch.randn(1, 1000), decoder_input_ids=torch.tensor([[1]])).logits
    assert logits.shape == (1, 1, 99)


def test_num_token_states_reads_the_count_as_token_states_gives():
    from splice.encoders import as_token_states, num_token_states

    for hidden in (torch.zeros(2, 7, 5), torch.zeros(2, 5, 3, 4)):
        assert num_token_states(hidden) == as_token_states(hidden).shape[1]
