"""Every PyTorch code example of the transformers docs pages for VisionEncoderDecoderModel and EncoderDecoderModel
(/work/shared/reference/docs-vision-encoder-decoder.md, docs-vision-encoder-decoder-with-tf-flax.txt,
docs-encoder-decoder-with-tf-flax.txt), run against splice's classes with tiny local checkpoints in place of hub ids.

Hub ids map to local directories written by fixtures in conftest.py:
    google/vit-base-patch16-224-in21k                -> vit_dir      (ViTModel + ViTImageProcessor)
    microsoft/swin-base-patch4-window7-224-in22k     -> swin_dir     (SwinForImageClassification, as on the hub)
    google-bert/bert-base-uncased                    -> bert_dir     (BertForPreTraining + BertTokenizer)
    openai-community/gpt2                            -> gpt2_dir     (GPT2LMHeadModel + GPT2Tokenizer)
    nlpconnect/vit-gpt2-image-captioning             -> captioner_dir (fine-tuned ViT-GPT-2, saved by transformers)
    microsoft/trocr-base-handwritten                 -> trocr_dir    (ViT + TrOCR decoder + TrOCRProcessor)
    patrickvonplaten/bert2bert_cnn_daily_mail        -> bert2bert_dir (fine-tuned bert2bert, saved by transformers)
The `requests.get(url)` images and `load_dataset("huggingface/cats-image")` become a synthetic PIL image.

The TFVisionEncoderDecoderModel / FlaxVisionEncoderDecoderModel / TFEncoderDecoderModel / FlaxEncoderDecoderModel
examples of the *-with-tf-flax pages run in test_seed_docs_frameworks.py, on the same fixtures.

Where an example mutates `model.config` (special tokens, generation settings), splice must honour it; transformers v5
ignores such edits in `generate`, so the oracle comparisons pass the same values to the oracle explicitly.
"""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers
from tiny import (
    BPE_VOCAB_SIZE,
    ENDOFTEXT,
    IMAGE_SIZE,
    bert_decoder_config,
    bert_encoder_config,
    gpt2_config,
    random_image,
    randomize,
    vit_config,
)
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    BertTokenizer,
    GPT2TokenizerFast,
    TrOCRProcessor,
    ViTImageProcessor,
)
from transformers.utils import logging as hf_logging

import splice
from splice import (
    EncoderDecoderConfig,
    EncoderDecoderModel,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
)

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ARTICLE_TO_SUMMARIZE = (
    "PG&E stated it scheduled the blackouts in response to forecasts for high winds "
    "amid dry conditions. The aim is to reduce the risk of wildfires. Nearly 800 thousand customers were "
    "scheduled to be affected by the shutoffs which were expected to last through at least midday tomorrow."
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' EncoderDecoderModel warns about its loss on every call
        return fn(*args, **kwargs)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _no_repeated_ngram(row: list[int], n: int) -> bool:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(grams) == len(set(grams))


# ---------------------------------------------------------------------------------------------------------------------
# local stand-ins for the hub checkpoints


def _tiny_bert_configs(vocab_size: int):
    encoder, decoder = bert_encoder_config(), bert_decoder_config()
    encoder.vocab_size = decoder.vocab_size = vocab_size
    return encoder, decoder


# ---------------------------------------------------------------------------------------------------------------------
# VisionEncoderDecoderModel page


def test_ved_randomly_initialized_from_configs():
    # >>> config_encoder = ViTConfig(); config_decoder = BertConfig()
    # >>> config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(config_encoder, config_decoder)
    # >>> model = VisionEncoderDecoderModel(config=config)
    config_encoder = vit_config()
    config_decoder = bert_decoder_config()
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(config_encoder, config_decoder)
    model = VisionEncoderDecoderModel(config=config)

    assert type(model.config) is VisionEncoderDecoderConfig
    assert isinstance(model.encoder, transformers.ViTModel)
    assert isinstance(model.decoder, transformers.BertLMHeadModel)  # "the default BertForCausalLM configuration"
    assert model.config.decoder.is_decoder and model.config.decoder.add_cross_attention
    assert model.decoder.bert.encoder.layer[0].crossattention is not None
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    decoder_input_ids = torch.randint(3, config_decoder.vocab_size, (2, 5))
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits
    assert logits.shape == (2, 5, config_decoder.vocab_size)
    assert torch.isfinite(logits).all()


def test_ved_config_docstring_save_and_load(tmp_path):
    # The VisionEncoderDecoderConfig docstring: build, reach the sub-configs, save, load config then model.
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(), bert_decoder_config())
    model = VisionEncoderDecoderModel(config=config)
    config_encoder = model.config.encoder
    config_decoder = model.config.decoder
    config_decoder.is_decoder = True
    config_decoder.add_cross_attention = True
    assert isinstance(config_encoder, transformers.ViTConfig)
    model.save_pretrained(tmp_path / "my-model")

    encoder_decoder_config = VisionEncoderDecoderConfig.from_pretrained(tmp_path / "my-model")
    loaded = VisionEncoderDecoderModel.from_pretrained(tmp_path / "my-model", config=encoder_decoder_config)
    assert type(encoder_decoder_config) is VisionEncoderDecoderConfig
    assert encoder_decoder_config.model_type == "vision-encoder-decoder"
    assert encoder_decoder_config.decoder.is_decoder and encoder_decoder_config.decoder.add_cross_attention
    assert type(loaded) is VisionEncoderDecoderModel
    _assert_same_weights(loaded, model)
    # The checkpoint is transformers' format: its own class loads it with nothing missing.
    oracle, info = transformers.VisionEncoderDecoderModel.from_pretrained(
        tmp_path / "my-model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    decoder_input_ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        got = loaded.eval()(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits
        expected = oracle.eval()(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_ved_from_encoder_decoder_pretrained_swin_bert(swin_dir, bert_dir):
    # >>> model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
    # ...     "microsoft/swin-base-patch4-window7-224-in22k", "google-bert/bert-base-uncased")
    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(swin_dir, bert_dir)
    assert type(model) is VisionEncoderDecoderModel
    assert isinstance(model.encoder, transformers.SwinModel)  # classification head dropped
    assert isinstance(model.decoder, transformers.BertLMHeadModel)
    assert model.config.decoder.is_decoder and model.config.decoder.add_cross_attention
    assert hasattr(model, "enc_to_dec_proj")  # Swin width 24 -> BERT width 32

    # Pretrained parts carry the checkpoints' weights; only the new cross-attention / projection are fresh. The
    # oracle's from_encoder_decoder_pretrained gives the same keys and the same pretrained values.
    oracle = transformers.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(swin_dir, bert_dir)
    ours, theirs = model.state_dict(), oracle.state_dict()
    assert set(ours) == set(theirs)
    fresh = [k for k in ours if "crossattention" in k or k.startswith("enc_to_dec_proj")]
    assert fresh
    for key in set(ours) - set(fresh):
        assert torch.equal(ours[key], theirs[key]), key
    swin = transformers.SwinForImageClassification.from_pretrained(swin_dir)
    patch = model.encoder.embeddings.patch_embeddings.projection.weight
    assert torch.equal(patch, swin.swin.embeddings.patch_embeddings.projection.weight)
    bert = transformers.BertForPreTraining.from_pretrained(bert_dir)
    head = model.decoder.cls.predictions.transform.dense.weight
    assert torch.equal(head, bert.cls.predictions.transform.dense.weight)


def test_ved_inference_vit_gpt2_captioning(captioner_dir):
    # >>> model = VisionEncoderDecoderModel.from_pretrained(<hub: nlpconnect/vit-gpt2-image-captioning>)
    # >>> tokenizer = GPT2TokenizerFast.from_pretrained(...); image_processor = ViTImageProcessor.from_pretrained(...)
    # >>> pixel_values = image_processor(image, return_tensors="pt").pixel_values
    # >>> generated_ids = model.generate(pixel_values)
    # >>> generated_text = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    model = VisionEncoderDecoderModel.from_pretrained(captioner_dir)
    tokenizer = GPT2TokenizerFast.from_pretrained(captioner_dir)
    image_processor = ViTImageProcessor.from_pretrained(captioner_dir)
    image = random_image(seed=1)
    pixel_values = image_processor(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    generated_ids = model.generate(pixel_values)
    generated_text = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    print(generated_text)

    # The checkpoint's generation settings (beams 4, max_length 16) and special tokens are in force.
    assert model.generation_config.num_beams == 4 and model.generation_config.max_length == 16
    assert generated_ids.shape[0] == 1 and 2 <= generated_ids.shape[1] <= 16
    assert generated_ids[0, 0].item() == ENDOFTEXT
    oracle = transformers.VisionEncoderDecoderModel.from_pretrained(captioner_dir)
    expected = oracle.generate(pixel_values)
    assert torch.equal(generated_ids, expected)
    assert isinstance(generated_text, str)
    assert generated_text == tokenizer.batch_decode(expected, skip_special_tokens=True)[0]


def test_ved_training_vit_bert(vit_dir, bert_dir, tmp_path):
    # >>> image_processor = ViTImageProcessor.from_pretrained(<hub: google/vit-base-patch16-224-in21k>)
    # >>> tokenizer = BertTokenizer.from_pretrained(<hub: google-bert/bert-base-uncased>)
    # >>> model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit, bert)
    # >>> model.config.decoder_start_token_id = tokenizer.cls_token_id
    # >>> model.config.pad_token_id = tokenizer.pad_token_id
    # >>> labels = tokenizer("an image of two cats chilling on a couch", return_tensors="pt").input_ids
    # >>> loss = model(pixel_values=pixel_values, labels=labels).loss
    image_processor = ViTImageProcessor.from_pretrained(vit_dir)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit_dir, bert_dir)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    image = random_image(seed=2)
    pixel_values = image_processor(image, return_tensors="pt").pixel_values
    labels = tokenizer("an image of two cats chilling on a couch", return_tensors="pt").input_ids
    assert tokenizer.unk_token_id not in labels.tolist()[0]
    loss = model(pixel_values=pixel_values, labels=labels).loss

    assert loss.ndim == 0 and torch.isfinite(loss)
    # "the forward function automatically creates the correct decoder_input_ids": [CLS] + labels[:-1].
    decoder_input_ids = torch.cat([torch.tensor([[tokenizer.cls_token_id]]), labels[:, :-1]], dim=1)
    logits = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(loss, F.cross_entropy(logits[0], labels[0]), atol=1e-6, rtol=0)
    # The config edits reach generation too (mirrored into generation_config when generating).
    model.eval()
    with torch.no_grad():
        assert model.generate(pixel_values, max_new_tokens=2)[0, 0].item() == tokenizer.cls_token_id
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    model.train()
    # Gradients reach the new cross-attention and the encoder.
    loss.backward()
    cross = model.decoder.bert.encoder.layer[0].crossattention.self.query.weight.grad
    assert cross is not None and cross.abs().sum() > 0
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    # Same loss in transformers' class from splice's checkpoint.
    model.save_pretrained(tmp_path / "vit-bert")
    oracle = transformers.VisionEncoderDecoderModel.from_pretrained(tmp_path / "vit-bert")
    torch.testing.assert_close(oracle(pixel_values=pixel_values, labels=labels).loss, loss, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_ved_forward_docstring_trocr(trocr_dir):
    # >>> processor = AutoProcessor.from_pretrained(<hub: microsoft/trocr-base-handwritten>)
    # >>> model = VisionEncoderDecoderModel.from_pretrained(<hub: microsoft/trocr-base-handwritten>)
    # >>> model.config.decoder_start_token_id = processor.tokenizer.eos_token_id
    # >>> model.config.pad_token_id = processor.tokenizer.pad_token_id
    # >>> model.config.vocab_size = model.config.decoder.vocab_size
    # >>> outputs = model(pixel_values=pixel_values, labels=labels); loss = outputs.loss
    # >>> generated_ids = model.generate(pixel_values)
    # >>> generated_text = processor.batch_decode(generated_ids, skip_special_tokens=True)[0]
    processor = AutoProcessor.from_pretrained(trocr_dir)
    model = VisionEncoderDecoderModel.from_pretrained(trocr_dir)
    assert isinstance(processor, TrOCRProcessor)
    assert isinstance(model.decoder, transformers.TrOCRForCausalLM)
    image = random_image(seed=3).convert("RGB")

    model.config.decoder_start_token_id = processor.tokenizer.eos_token_id
    model.config.pad_token_id = processor.tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    assert model.config.vocab_size == BPE_VOCAB_SIZE

    pixel_values = processor(image, return_tensors="pt").pixel_values
    text = "hello world"
    labels = processor.tokenizer(text, return_tensors="pt").input_ids
    outputs = model(pixel_values=pixel_values, labels=labels)
    loss = outputs.loss
    assert torch.isfinite(loss)
    assert outputs.logits.shape == (1, labels.shape[1], BPE_VOCAB_SIZE)

    model.eval()
    generated_ids = model.generate(pixel_values)
    generated_text = processor.batch_decode(generated_ids, skip_special_tokens=True)[0]
    assert isinstance(generated_text, str)
    assert generated_ids[0, 0].item() == processor.tokenizer.eos_token_id

    # transformers: its forward reads the edited config; its v5 generate needs the ids passed explicitly.
    oracle = transformers.VisionEncoderDecoderModel.from_pretrained(trocr_dir)
    assert oracle.generation_config.decoder_start_token_id == 0
    oracle.config.decoder_start_token_id = processor.tokenizer.eos_token_id
    oracle.config.pad_token_id = processor.tokenizer.pad_token_id
    torch.testing.assert_close(oracle(pixel_values=pixel_values, labels=labels).loss, loss, atol=1e-6, rtol=0)
    expected = oracle.eval().generate(pixel_values, decoder_start_token_id=processor.tokenizer.eos_token_id)
    assert torch.equal(expected, generated_ids)

    # Assigning a vocab_size the decoder does not have is refused rather than silently ignored.
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        model.config.vocab_size = model.config.decoder.vocab_size + 1


def test_ved_from_encoder_decoder_pretrained_then_save_load(vit_dir, bert_dir, tmp_path):
    # >>> model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit, bert)
    # >>> model.save_pretrained("./vit-bert")
    # >>> model = VisionEncoderDecoderModel.from_pretrained(<hub: ./vit-bert>)
    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit_dir, bert_dir)
    model.save_pretrained(tmp_path / "vit-bert")
    loaded = VisionEncoderDecoderModel.from_pretrained(tmp_path / "vit-bert")
    assert type(loaded) is VisionEncoderDecoderModel
    _assert_same_weights(loaded, model)  # the randomly initialised cross-attention is saved too
    with open(tmp_path / "vit-bert" / "config.json") as f:
        saved = json.load(f)
    assert saved["model_type"] == "vision-encoder-decoder"
    assert saved["encoder"]["model_type"] == "vit" and saved["decoder"]["model_type"] == "bert"
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        a = model.eval()(pixel_values=pixel_values, decoder_input_ids=torch.tensor([[2, 6, 7]] * 2)).logits
        b = loaded.eval()(pixel_values=pixel_values, decoder_input_ids=torch.tensor([[2, 6, 7]] * 2)).logits
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# EncoderDecoderModel page


def test_ed_randomly_initialized_from_configs(tmp_path):
    # >>> config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(), BertConfig())
    # >>> model = EncoderDecoderModel(config=config)
    # ... and the EncoderDecoderConfig docstring: sub-configs, save, load config then model.
    config_encoder, config_decoder = bert_encoder_config(), bert_decoder_config()
    config = EncoderDecoderConfig.from_encoder_decoder_configs(config_encoder, config_decoder)
    model = EncoderDecoderModel(config=config)
    assert isinstance(model.encoder, transformers.BertModel)
    assert isinstance(model.decoder, transformers.BertLMHeadModel)
    assert not model.config.encoder.is_decoder

    config_encoder = model.config.encoder
    config_decoder = model.config.decoder
    config_decoder.is_decoder = True
    config_decoder.add_cross_attention = True
    model.save_pretrained(tmp_path / "my-model")
    encoder_decoder_config = EncoderDecoderConfig.from_pretrained(tmp_path / "my-model")
    loaded = EncoderDecoderModel.from_pretrained(tmp_path / "my-model", config=encoder_decoder_config)
    assert type(encoder_decoder_config) is EncoderDecoderConfig
    assert encoder_decoder_config.model_type == "encoder-decoder"
    assert type(loaded) is EncoderDecoderModel
    _assert_same_weights(loaded, model)
    input_ids = torch.randint(3, 99, (2, 6))
    with torch.no_grad():
        a = model.eval()(input_ids=input_ids, decoder_input_ids=input_ids[:, :4]).logits
        b = loaded.eval()(input_ids=input_ids, decoder_input_ids=input_ids[:, :4]).logits
    assert a.shape == (2, 4, 99)
    assert torch.equal(a, b)


def test_ed_from_encoder_decoder_pretrained_bert2bert(bert_dir):
    # >>> tokenizer = BertTokenizer.from_pretrained(<hub: google-bert/bert-base-uncased>)
    # >>> model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    assert isinstance(model.encoder, transformers.BertModel) and not model.config.encoder.is_decoder
    assert isinstance(model.decoder, transformers.BertLMHeadModel) and model.config.decoder.is_decoder
    assert model.config.decoder.vocab_size == len(tokenizer)
    # Both towers start from the same BERT weights, as separate (untied) parameters.
    enc_emb = model.encoder.embeddings.word_embeddings.weight
    dec_emb = model.decoder.bert.embeddings.word_embeddings.weight
    assert torch.equal(enc_emb, dec_emb) and enc_emb.data_ptr() != dec_emb.data_ptr()

    oracle = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    ours, theirs = model.state_dict(), oracle.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        if "crossattention" not in key:
            assert torch.equal(ours[key], theirs[key]), key


def test_ed_inference_bert2bert_summarization(bert2bert_dir):
    # >>> model = EncoderDecoderModel.from_pretrained(<hub: patrickvonplaten/bert2bert_cnn_daily_mail>)
    # >>> tokenizer = AutoTokenizer.from_pretrained(<hub: patrickvonplaten/bert2bert_cnn_daily_mail>)
    # >>> input_ids = tokenizer(ARTICLE_TO_SUMMARIZE, return_tensors="pt").input_ids
    # >>> generated_ids = model.generate(input_ids)
    # >>> generated_text = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    model = EncoderDecoderModel.from_pretrained(bert2bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(bert2bert_dir)
    input_ids = tokenizer(ARTICLE_TO_SUMMARIZE, return_tensors="pt").input_ids
    generated_ids = model.generate(input_ids)
    generated_text = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    print(generated_text)

    assert isinstance(generated_text, str)
    assert generated_ids[0, 0].item() == tokenizer.cls_token_id
    assert generated_ids.shape[1] <= 20  # the checkpoint's max_length
    oracle = transformers.EncoderDecoderModel.from_pretrained(bert2bert_dir)
    assert torch.equal(generated_ids, oracle.generate(input_ids))


def test_ed_training_bert2bert(bert_dir, tmp_path):
    # >>> model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert)
    # >>> model.config.decoder_start_token_id = tokenizer.cls_token_id
    # >>> model.config.pad_token_id = tokenizer.pad_token_id
    # >>> input_ids = tokenizer("The tower is 324 metres ...").input_ids; labels = tokenizer("the eiffel ...").input_ids
    # >>> loss = model(input_ids=input_ids, labels=labels).loss
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    input_ids = tokenizer("the tower is tall , the tallest tower in paris .", return_tensors="pt").input_ids
    labels = tokenizer("the tower is tall .", return_tensors="pt").input_ids
    loss = model(input_ids=input_ids, labels=labels).loss
    assert loss.ndim == 0 and torch.isfinite(loss)

    decoder_input_ids = torch.cat([torch.tensor([[tokenizer.cls_token_id]]), labels[:, :-1]], dim=1)
    logits = model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(loss, F.cross_entropy(logits[0], labels[0]), atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path / "bert2bert")
    oracle = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert")
    expected = _quiet(oracle, input_ids=input_ids, labels=labels).loss
    torch.testing.assert_close(expected, loss, atol=1e-6, rtol=0)

    # "fine-tuned similar to BART, T5": a few optimiser steps on the pair lower the loss.
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        step_loss = model(input_ids=input_ids, labels=labels).loss
        step_loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step_loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_ed_forward_docstring(bert_dir, tmp_path):
    # >>> model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert)
    # >>> model.config.decoder_start_token_id = tokenizer.cls_token_id
    # >>> model.config.pad_token_id = tokenizer.pad_token_id
    # >>> model.config.vocab_size = model.config.decoder.vocab_size
    # >>> outputs = model(input_ids=input_ids, labels=labels); loss, logits = outputs.loss, outputs.logits
    # >>> model.save_pretrained("bert2bert"); model = EncoderDecoderModel.from_pretrained(<hub: bert2bert>)
    # >>> generated = model.generate(input_ids)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    input_ids = tokenizer("this is a really long text", return_tensors="pt").input_ids
    labels = tokenizer("this is the corresponding summary", return_tensors="pt").input_ids
    model.eval()
    outputs = model(input_ids=input_ids, labels=labels)
    loss, logits = outputs.loss, outputs.logits
    assert torch.isfinite(loss)
    assert logits.shape == (1, labels.shape[1], len(tokenizer))

    model.save_pretrained(tmp_path / "bert2bert")
    model = EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert")
    assert model.config.decoder_start_token_id == tokenizer.cls_token_id  # the config edits were saved
    assert model.config.pad_token_id == tokenizer.pad_token_id
    reloaded = model(input_ids=input_ids, labels=labels)
    assert torch.equal(reloaded.logits, logits) and reloaded.loss.item() == loss.item()
    generated = model.generate(input_ids)
    assert generated[0, 0].item() == tokenizer.cls_token_id
    # BERT has no eos: generation runs to transformers' default length limit, as the oracle's does.
    oracle = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert")
    assert torch.equal(oracle.generate(input_ids), generated)
    assert generated.shape[1] >= 20


def test_ed_from_encoder_decoder_pretrained_then_save_load(bert_dir, tmp_path):
    # >>> model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert)
    # >>> model.save_pretrained("./bert2bert"); model = EncoderDecoderModel.from_pretrained(<hub: ./bert2bert>)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    model.save_pretrained(tmp_path / "bert2bert")
    loaded = EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert")
    assert type(loaded) is EncoderDecoderModel
    _assert_same_weights(loaded, model)
    # The Auto class maps the checkpoint to splice's class after `import splice`.
    auto = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bert2bert")
    assert type(auto) is splice.EncoderDecoderModel
    _assert_same_weights(auto, model)


# ---------------------------------------------------------------------------------------------------------------------
# Seed-era idiom: generation settings assigned on `model.config` (warm-starting blog, SmallCap, TrOCR notebooks).
# transformers v5 no longer reads them there; splice mirrors them into `model.generation_config`.

GENERATION_SETTINGS = {
    "max_length": 25,
    "num_beams": 4,
    "early_stopping": True,
    "no_repeat_ngram_size": 3,
    "length_penalty": 2.0,
}


def _bert2bert_model(bert_dir):
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, bert_dir)
    randomize(model, seed=21)  # non-degenerate, so the n-gram and length settings visibly act
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.encoder.vocab_size  # as in the warm-starting blog
    inputs = tokenizer(["the tower is tall .", "two cats on a couch"], padding=True, return_tensors="pt")
    return model, dict(inputs), transformers.EncoderDecoderModel


def _vit_gpt2_model(vit_dir, tmp_path):
    decoder_dir = tmp_path / "gpt2"
    config = gpt2_config()
    config.vocab_size = BPE_VOCAB_SIZE
    config.bos_token_id = config.eos_token_id = None  # no eos: beams run to max_length
    randomize(transformers.GPT2LMHeadModel(config), seed=22).save_pretrained(decoder_dir)
    model = VisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit_dir, str(decoder_dir))
    randomize(model, seed=23)
    model.config.decoder_start_token_id = ENDOFTEXT
    model.config.pad_token_id = ENDOFTEXT
    image_processor = ViTImageProcessor.from_pretrained(vit_dir)
    inputs = {"pixel_values": image_processor([random_image(4), random_image(5)], return_tensors="pt").pixel_values}
    return model, inputs, transformers.VisionEncoderDecoderModel


@pytest.mark.parametrize("kind", ["bert2bert", "vit-gpt2"])
def test_generation_settings_on_config(kind, bert_dir, vit_dir, tmp_path):
    if kind == "bert2bert":
        model, inputs, oracle_cls = _bert2bert_model(bert_dir)
    else:
        model, inputs, oracle_cls = _vit_gpt2_model(vit_dir, tmp_path)
    model.eval()
    assert model.config.eos_token_id is None  # neither decoder has an eos: beams run to max_length

    model.config.max_length = 25
    model.config.num_beams = 4
    model.config.early_stopping = True
    model.config.no_repeat_ngram_size = 3
    model.config.length_penalty = 2.0
    for key, value in GENERATION_SETTINGS.items():
        assert getattr(model.config, key) == value  # readable where it was written

    generated = model.generate(**inputs)
    for key, value in GENERATION_SETTINGS.items():
        assert getattr(model.generation_config, key) == value, key
    assert generated.shape == (2, 25)  # max_length honoured (no eos, so exactly 25)
    for row in generated.tolist():
        assert _no_repeated_ngram(row, 3), row  # no_repeat_ngram_size honoured
    assert len(set(generated[:, 1:].flatten().tolist())) > 3

    # Same ids as transformers given the same settings explicitly (v5 transformers ignores them on model.config).
    out = tmp_path / "with-settings"
    model.save_pretrained(out)
    oracle = oracle_cls.from_pretrained(out).eval()
    expected = _quiet(
        oracle.generate,
        **inputs,
        **GENERATION_SETTINGS,
        decoder_start_token_id=model.config.decoder_start_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    assert torch.equal(generated, expected)

    # save_pretrained wrote them to generation_config.json, and a reload generates the same.
    with open(out / "generation_config.json") as f:
        saved = json.load(f)
    for key, value in GENERATION_SETTINGS.items():
        assert saved[key] == value, key
    reloaded = type(model).from_pretrained(out).eval()
    assert torch.equal(reloaded.generate(**inputs), generated)
    # transformers reads the same generation_config.json: its plain generate() now agrees too.
    assert torch.equal(_quiet(oracle.generate, **inputs), generated)


def test_generation_settings_on_config_saved_without_generate(bert_dir, tmp_path):
    # Settings assigned on the config and saved straight away (no generate in between) still reach the checkpoint.
    model, inputs, _ = _bert2bert_model(bert_dir)
    model.config.max_length = 12
    model.config.num_beams = 2
    model.save_pretrained(tmp_path / "saved")
    reloaded = EncoderDecoderModel.from_pretrained(tmp_path / "saved").eval()
    assert reloaded.generation_config.max_length == 12
    assert reloaded.generation_config.num_beams == 2
    assert reloaded.generate(**inputs).shape == (2, 12)
    # A later assignment wins over the saved value.
    reloaded.config.max_length = 7
    assert reloaded.generate(**inputs).shape == (2, 7)
