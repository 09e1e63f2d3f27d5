"""Behaviour of the core composite beyond parity: special tokens, errors, accessors, tying, training hooks."""

import pytest
import torch
import transformers as T
from tiny import bert_decoder_config, bert_encoder_config, gpt2_config, llama_config, vit_config

import splice

# GPT-2 as released: no pad token (the special-token tests rely on it) and the default 4x inner width.
GPT2 = {"pad_token_id": None, "n_inner": None}


def vision_model(dec=None, **kw):
    torch.manual_seed(0)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), dec or gpt2_config(**GPT2), **kw
    )
    return splice.VisionEncoderDecoderModel(config).eval()


PIXELS = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(1))


# -- special tokens -------------------------------------------------------------------------------------------------


def test_special_tokens_are_inferred_and_mirrored():
    model = vision_model()
    # GPT-2 has no pad and no decoder start: start falls back to bos, pad to eos.
    assert model.config.decoder_start_token_id == 1 and model.generation_config.decoder_start_token_id == 1
    assert model.config.pad_token_id == 2 and model.generation_config.pad_token_id == 2
    assert model.generation_config.eos_token_id == 2
    out = model.generate(PIXELS, max_new_tokens=3)
    assert out.shape == (2, 4) and (out[:, 0] == 1).all()


def test_explicit_value_beats_decoder_config():
    model = vision_model(decoder_start_token_id=7, pad_token_id=5)
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (7, 5)
    assert model.generation_config.decoder_start_token_id == 7


def test_seed_idiom_setting_tokens_on_config_reaches_generation():
    model = vision_model()
    model.config.decoder_start_token_id = 9
    out = model.generate(PIXELS, max_new_tokens=2)
    assert (out[:, 0] == 9).all()
    assert model.generation_config.decoder_start_token_id == 9
    # ...and the transformers v5 way, on the generation config, reaches the config.
    model.generation_config.decoder_start_token_id = 11
    out = model.generate(PIXELS, max_new_tokens=2)
    assert (out[:, 0] == 11).all() and model.config.decoder_start_token_id == 11


def test_generation_settings_on_config_are_mirrored(tmp_path):
    model = vision_model()
    model.config.max_length = 5
    model.config.num_beams = 2
    assert model.config.max_length == 5  # still readable where it was set
    out = model.generate(PIXELS)
    assert out.shape[1] <= 5
    assert model.generation_config.num_beams == 2
    model.save_pretrained(tmp_path)  # transformers v5 would refuse generation settings on the config
    reloaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    assert reloaded.generation_config.max_length == 5


def test_out_of_vocab_token_in_decoder_config_fails_at_build():
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), gpt2_config(**GPT2, eos_token_id=500)
    )
    with pytest.raises(ValueError, match=r"eos_token_id=500.*\[0, 99\)"):
        splice.VisionEncoderDecoderModel(config)


def test_out_of_vocab_token_fails_before_generate():
    model = vision_model()
    with pytest.raises(ValueError, match=r"pad_token_id=1000.*\[0, 99\)"):
        model.generate(PIXELS, pad_token_id=1000)
    model.generation_config.eos_token_id = 5000
    with pytest.raises(ValueError, match=r"eos_token_id=5000"):
        model.generate(PIXELS)


def test_out_of_vocab_labels_name_the_fix():
    model = vision_model()
    with pytest.raises(ValueError, match=r"labels contains id 120.*resize_token_embeddings"):
        model(pixel_values=PIXELS, labels=torch.tensor([[3, 120], [3, 4]]))


def test_missing_special_tokens_error_names_the_field():
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), bert_decoder_config(pad_token_id=None, bos_token_id=None, eos_token_id=None)
    )
    model = splice.VisionEncoderDecoderModel(config)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(pixel_values=PIXELS, labels=torch.tensor([[3, 4]] * 2))


# -- errors users can act on ----------------------------------------------------------------------------------------


def test_decoder_without_cross_attention_names_conditioning():
    llama = llama_config(pad_token_id=None)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), llama, conditioning="native")
    with pytest.raises(ValueError, match="no cross-attention.*conditioning"):
        splice.VisionEncoderDecoderModel(config)


def test_encoder_with_lm_head_is_rejected():
    encoder = T.BertForMaskedLM(bert_encoder_config())
    decoder = T.GPT2LMHeadModel(gpt2_config(**GPT2, add_cross_attention=True))
    with pytest.raises(ValueError, match="language-model head"):
        splice.EncoderDecoderModel(encoder=encoder, decoder=decoder)


def test_width_mismatch_adds_projection_and_conflict_is_explained():
    model = vision_model(gpt2_config(**GPT2, n_embd=48))
    assert model.enc_to_dec_proj.in_features == 32 and model.enc_to_dec_proj.out_features == 48
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), bert_decoder_config(cross_attention_hidden_size=64)
    )
    with pytest.raises(ValueError, match="cross_attention_hidden_size=64.*hidden size is 32"):
        splice.VisionEncoderDecoderModel(config)


def test_unknown_conditioning_is_rejected():
    with pytest.raises(ValueError, match="conditioning='cross'"):
        splice.SpliceConfig(conditioning="cross")


# -- forward outputs ------------------------------------------------------------------------------------------------


def test_forward_returns_every_seq2seq_field_and_tuples():
    model = vision_model()
    model.config._attn_implementation = "eager"
    labels = torch.tensor([[5, 6, 7], [8, 9, -100]])
    out = model(pixel_values=PIXELS, labels=labels, output_attentions=True, output_hidden_states=True)
    assert out.logits.shape == (2, 3, 99) and torch.isfinite(out.loss)
    assert len(out.decoder_hidden_states) == 3 and len(out.decoder_attentions) == 2
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (2, 4, 3, 10)
    assert out.encoder_last_hidden_state.shape == (2, 10, 32) and len(out.encoder_hidden_states) == 3
    assert len(out.encoder_attentions) == 2
    as_tuple = model(pixel_values=PIXELS, labels=labels, return_dict=False)
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)


def test_loss_ignores_padding_labels():
    model = vision_model()
    labels = torch.tensor([[5, 6, 7, -100, -100]])
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    assert decoder_input_ids.tolist() == [[1, 5, 6, 7, 2]]  # start token, shifted labels, -100 -> pad
    full = model(pixel_values=PIXELS[:1], labels=labels).loss
    short = model(pixel_values=PIXELS[:1], labels=labels[:, :3]).loss
    torch.testing.assert_close(full, short)


def test_encoder_outputs_as_tuple_and_kwargs_routing():
    model = vision_model()
    encoder_outputs = model.get_encoder()(pixel_values=PIXELS)
    ids = torch.tensor([[1, 5, 6]] * 2)
    a = model(encoder_outputs=(encoder_outputs.last_hidden_state,), decoder_input_ids=ids).logits
    b = model(pixel_values=PIXELS, decoder_input_ids=ids).logits
    assert torch.equal(a, b)
    # `decoder_`-prefixed kwargs reach the decoder: explicit position ids shift the result.
    c = model(pixel_values=PIXELS, decoder_input_ids=ids, decoder_position_ids=torch.tensor([[5, 6, 7]] * 2)).logits
    assert not torch.allclose(b, c)


def test_generate_runs_the_encoder_once():
    model = vision_model()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    for kwargs in ({}, {"num_beams": 3}, {"do_sample": True, "top_k": 5}):
        calls.clear()
        out = model.generate(PIXELS, max_new_tokens=4, min_new_tokens=4, **kwargs)
        assert out.shape == (2, 5) and len(calls) == 1


# -- accessors, resizing, checkpointing -----------------------------------------------------------------------------


def test_accessors_and_resize_token_embeddings():
    model = vision_model()
    assert model.get_encoder() is model.encoder and model.get_decoder() is model.decoder
    assert model.get_input_embeddings() is model.decoder.get_input_embeddings()
    assert model.get_output_embeddings() is model.decoder.get_output_embeddings()
    model.resize_token_embeddings(120)
    assert model.config.decoder.vocab_size == 120 and model.config.vocab_size == 120
    assert model(pixel_values=PIXELS, decoder_input_ids=torch.tensor([[1, 110]] * 2)).logits.shape[-1] == 120
    model.config.vocab_size = 120  # the TrOCR docs idiom keeps working
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        model.config.vocab_size = 50


def test_gradient_checkpointing_gives_the_same_gradients():
    model = vision_model(gpt2_config(**GPT2, n_embd=48)).train()
    for module in model.modules():  # dropout off so the two passes are comparable
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    labels = torch.tensor([[5, 6, 7], [8, 9, 10]])

    def grads(m):
        m.zero_grad()
        m(pixel_values=PIXELS, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads(model)
    model.activation_checkpointing_enable()
    for part in (model.encoder, model.decoder):
        assert any(getattr(m, "gradient_checkpointing", False) for m in part.modules())
    checkpointed = grads(model)
    assert plain.keys() == checkpointed.keys() and "enc_to_dec_proj.weight" in plain
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_tie_encoder_decoder_shares_weights(tmp_path):
    config = splice.EncoderDecoderConfig.from_encoder_decoder_configs(
        bert_encoder_config(), bert_encoder_config(), tie_encoder_decoder=True, decoder_start_token_id=1
    )
    model = splice.EncoderDecoderModel(config).eval()
    shared = model.encoder.encoder.layer[0].attention.self.query.weight
    assert model.decoder.bert.encoder.layer[0].attention.self.query.weight is shared
    assert model.decoder.bert.embeddings.word_embeddings.weight is model.encoder.embeddings.word_embeddings.weight
    untied = splice.EncoderDecoderModel(
        splice.EncoderDecoderConfig.from_dict(config.to_dict() | {"tie_encoder_decoder": False})
    )
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())
    ids = torch.tensor([[3, 4, 5, 6]])
    before = model(input_ids=ids, decoder_input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = splice.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert reloaded.decoder.bert.encoder.layer[0].attention.self.query.weight is (
        reloaded.encoder.encoder.layer[0].attention.self.query.weight
    )
    torch.testing.assert_close(reloaded(input_ids=ids, decoder_input_ids=ids).logits, before, rtol=0, atol=1e-6)


def test_generic_splice_model_takes_its_main_input_from_the_encoder(tmp_path):
    text = splice.SpliceModel(
        splice.SpliceConfig.from_encoder_decoder_configs(bert_encoder_config(), gpt2_config(**GPT2))
    )
    assert text.main_input_name == "input_ids"
    vision = splice.SpliceModel(splice.SpliceConfig.from_encoder_decoder_configs(vit_config(), gpt2_config(**GPT2)))
    assert vision.main_input_name == "pixel_values"
    vision.save_pretrained(tmp_path)
    loaded = T.AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is splice.SpliceModel and loaded.config.model_type == "splice"


def test_processor_saves_with_the_model_and_captions(tmp_path):
    from PIL import Image

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue"]
    tokenizer = T.BertTokenizer(vocab={word: i for i, word in enumerate(words)})
    processor = splice.SpliceProcessor(T.ViTImageProcessor(size={"height": 30, "width": 30}), tokenizer)
    model = vision_model(decoder_start_token_id=2, pad_token_id=0, eos_token_id=3)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    loaded = T.AutoProcessor.from_pretrained(tmp_path / "model")
    assert type(loaded) is splice.SpliceProcessor
    batch = loaded(images=[Image.new("RGB", (40, 20), "red")], text=["red blue"])
    assert batch["pixel_values"].shape == (1, 3, 30, 30) and batch["labels"].tolist() == [[2, 5, 6, 3]]
    assert loaded.batch_decode([[2, 5, -100, 6, 3]]) == ["red blue"]  # -100 from the trainer decodes safely
    reloaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path / "model")
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    captions = reloaded.caption(images, max_new_tokens=3)
    expected = loaded.batch_decode(reloaded.generate(loaded(images=images)["pixel_values"], max_new_tokens=3))
    assert captions == expected and len(captions) == 2


def test_generation_settings_stay_readable_and_later_edits_win():
    model = vision_model()
    model.config.max_length = 6
    model.generate(PIXELS)
    assert model.config.max_length == 6 and model.generation_config.max_length == 6
    model.generation_config.max_length = 4  # a later edit of the generation config is not overwritten
    assert model.generate(PIXELS).shape[1] == 4
    model.config.max_length = 5  # ...and a later edit of the config is mirrored again
    assert model.generate(PIXELS).shape[1] <= 5 and model.generation_config.max_length == 5


def test_reassigning_a_generation_setting_on_the_config_mirrors_it_again():
    model = vision_model()
    model.config.max_length = 5
    model.generate(PIXELS)
    model.generation_config.max_length = 7
    model.config.max_length = 5  # the same value as before, assigned again: the latest edit wins
    model.generate(PIXELS)
    assert model.generation_config.max_length == 5


def test_no_encoder_states_are_held_after_a_forward_or_a_generate():
    llama = llama_config(pad_token_id=None)
    model = splice.SpliceModel(splice.SpliceConfig.from_encoder_decoder_configs(vit_config(), llama)).eval()
    assert model.config.conditioning == "injected"

    def held_tensors() -> list[str]:  # tensors kept on modules outside their parameters and buffers
        return [
            f"{name}.{key}"
            for name, module in model.named_modules()
            for key, value in vars(module).items()
            if isinstance(value, torch.Tensor)
            or (isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value))
        ]

    with torch.no_grad():
        model(pixel_values=PIXELS, decoder_input_ids=torch.tensor([[1, 5]] * 2))
    assert held_tensors() == []
    model.generate(PIXELS, max_new_tokens=3)
    assert held_tensors() == []
