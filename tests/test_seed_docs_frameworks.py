"""Every TensorFlow and Flax code example of the transformers docs pages (docs-vision-encoder-decoder-with-tf-flax.txt,
docs-encoder-decoder-with-tf-flax.txt), run against splice's TF and JAX classes with tiny local checkpoints in place
of hub ids, each checked against splice's PyTorch class on the same weights.

Hub ids map to the local directories of `test_seed_docs.py` (the same fixtures, in conftest.py), plus:
    openai-community/gpt2                         -> gpt2_dir      (GPT2LMHeadModel + its tokenizer, no cross-attention)
    google-bert/bert-base-cased                   -> bert_dir
    patrickvonplaten/bert2gpt2-cnn_dailymail-fp16 -> bert2gpt2_dir (a fine-tuned bert2gpt2 saved by transformers)
    patrickvonplaten/bert2bert-cnn_dailymail-fp16 -> bert2bert_dir
The examples' `assert summary == "..."` (a real checkpoint's output) becomes: the same ids as PyTorch. Their
`return_tensors="tf"` becomes `"np"`: transformers v5's tokenizers and image processors no longer make TF tensors
(the TF classes take NumPy arrays and TF tensors alike; `tf.constant` inputs are tested in test_tf.py).
"""

import numpy as np
import pytest
import torch
import transformers
from tiny import ENDOFTEXT, bpe_gpt2_tokenizer, gpt2_config, random_image, randomize, tiny_image_processor
from transformers import BertTokenizer, GPT2Tokenizer, ViTImageProcessor

import splice
from splice import (
    EncoderDecoderModel,
    FlaxEncoderDecoderModel,
    FlaxVisionEncoderDecoderModel,
    TFEncoderDecoderModel,
    TFVisionEncoderDecoderModel,
    VisionEncoderDecoderModel,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("gpt2"))
    tokenizer = bpe_gpt2_tokenizer()
    config = gpt2_config(vocab_size=len(tokenizer), bos_token_id=ENDOFTEXT, eos_token_id=ENDOFTEXT, pad_token_id=None)
    randomize(transformers.GPT2LMHeadModel(config), seed=21, std=0.25).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert2gpt2_dir(tmp_path_factory, bert_dir, gpt2_dir) -> str:
    directory = str(tmp_path_factory.mktemp("bert2gpt2-cnn_dailymail"))
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, gpt2_dir)
    randomize(model, seed=22, std=0.25)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = cfg.eos_token_id = cfg.pad_token_id = ENDOFTEXT
    model.save_pretrained(directory)
    return directory


def _same_as_torch(sequences, torch_class, directory, *args, **kwargs):
    """The PyTorch class on the same checkpoint generates the same ids."""
    with torch.no_grad():
        expected = torch_class.from_pretrained(directory).eval().generate(*args, **kwargs)
    np.testing.assert_array_equal(np.asarray(sequences), expected.numpy())


# ---------------------------------------------------------------------------------------------------------------------
# docs-vision-encoder-decoder-with-tf-flax.txt


def test_tf_ved_load_pytorch_checkpoint_workaround(captioner_dir, tmp_path):
    _model = VisionEncoderDecoderModel.from_pretrained(captioner_dir)
    _model.encoder.save_pretrained(tmp_path / "encoder")
    _model.decoder.save_pretrained(tmp_path / "decoder")
    model = TFVisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "encoder", tmp_path / "decoder", encoder_from_pt=True, decoder_from_pt=True
    )
    # This is only for copying some specific attributes of this particular model.
    model.config = _model.config
    pixel_values = ViTImageProcessor.from_pretrained(captioner_dir)(random_image(), return_tensors="np").pixel_values
    generated = model.generate(pixel_values, max_length=8)
    with torch.no_grad():
        # Only the config was copied: `_model`'s generation config (4 beams) is not the TF model's.
        expected = _model.eval().generate(torch.from_numpy(pixel_values), max_length=8, num_beams=1)
    np.testing.assert_array_equal(generated.numpy(), expected.numpy())


def test_tf_ved_forward_training_save_load_generate(vit_dir, gpt2_dir, tmp_path):
    image_processor = transformers.AutoImageProcessor.from_pretrained(vit_dir)
    decoder_tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    model = TFVisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit_dir, gpt2_dir)
    img = random_image()
    pixel_values = image_processor(images=img, return_tensors="np").pixel_values  # Batch size 1
    decoder_input_ids = decoder_tokenizer("Linda Davis", return_tensors="np").input_ids  # Batch size 1
    outputs = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids)
    outputs = model(pixel_values=pixel_values, decoder_input_ids=decoder_input_ids, labels=decoder_input_ids)
    loss, logits = outputs.loss, outputs.logits
    model.save_pretrained(tmp_path / "vit-gpt2")
    model = TFVisionEncoderDecoderModel.from_pretrained(tmp_path / "vit-gpt2")
    generated = model.generate(pixel_values, decoder_start_token_id=model.config.decoder.bos_token_id, max_length=8)

    torch_model = VisionEncoderDecoderModel.from_pretrained(tmp_path / "vit-gpt2").eval()
    pixels, ids = torch.from_numpy(pixel_values), torch.from_numpy(decoder_input_ids)
    with torch.no_grad():
        expected = torch_model(pixel_values=pixels, decoder_input_ids=ids, labels=ids)
    assert abs(float(loss) - expected.loss.item()) <= 1e-5
    assert np.abs(logits.numpy() - expected.logits.numpy()).max() <= 1e-5
    _same_as_torch(generated, VisionEncoderDecoderModel, tmp_path / "vit-gpt2", pixels,
                   decoder_start_token_id=ENDOFTEXT, max_length=8)  # fmt: skip


def _assert_same_weights_and_logits(saved, loaded, inputs: dict) -> None:
    """A TF or Flax model reloaded from a save: the same parameters (names and values, the fresh cross-attention
    included) and the same logits as the model that was saved."""
    from splice.flax.weights import flatten

    def weights(model) -> list[tuple[str, np.ndarray]]:
        if isinstance(model, (TFVisionEncoderDecoderModel, TFEncoderDecoderModel)):
            return [(w.name, w.numpy()) for w in model.weights]
        return [(k, np.asarray(v)) for k, v in flatten(model.params).items()]

    before, after = weights(saved), weights(loaded)
    assert [k for k, _ in before] == [k for k, _ in after]
    assert any("crossattention" in k for k, _ in before)
    for (key, value), (_, reloaded) in zip(before, after):
        np.testing.assert_array_equal(reloaded, value, err_msg=key)
    batch = len(next(iter(inputs.values())))
    decoder_input_ids = np.array([[1, 5, 6, 7]] * batch, np.int32)
    expected = np.asarray(saved(**inputs, decoder_input_ids=decoder_input_ids).logits)
    assert expected.shape[:2] == (batch, 4) and np.isfinite(expected).all()
    np.testing.assert_array_equal(np.asarray(loaded(**inputs, decoder_input_ids=decoder_input_ids).logits), expected)


def test_tf_and_flax_ved_from_encoder_decoder_pretrained_save_load(vit_dir, bert_dir, tmp_path):
    pixel_values = tiny_image_processor()([random_image(0), random_image(1)], return_tensors="np").pixel_values
    for cls in (TFVisionEncoderDecoderModel, FlaxVisionEncoderDecoderModel):
        saved = cls.from_encoder_decoder_pretrained(vit_dir, bert_dir)
        saved.save_pretrained(tmp_path / "vit-bert")
        model = cls.from_pretrained(tmp_path / "vit-bert")
        assert model.config.decoder.add_cross_attention and model.config.decoder.is_decoder
        _assert_same_weights_and_logits(saved, model, {"pixel_values": pixel_values})


def test_flax_ved_captioning_with_beams(vit_dir, gpt2_dir, tmp_path):
    image_processor = transformers.AutoImageProcessor.from_pretrained(vit_dir)
    tokenizer_output = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    model = FlaxVisionEncoderDecoderModel.from_encoder_decoder_pretrained(vit_dir, gpt2_dir)
    pixel_values = image_processor(images=random_image(), return_tensors="np").pixel_values
    # use GPT2's eos_token as the pad as well as eos token
    model.config.eos_token_id = model.config.decoder.eos_token_id
    model.config.pad_token_id = model.config.eos_token_id
    sequences = model.generate(pixel_values, num_beams=4, max_length=12).sequences
    captions = tokenizer_output.batch_decode(sequences, skip_special_tokens=True)
    assert isinstance(captions[0], str)
    model.save_pretrained(tmp_path)  # the same weights and special tokens, for the PyTorch class
    _same_as_torch(sequences, VisionEncoderDecoderModel, tmp_path, torch.from_numpy(pixel_values), num_beams=4,
                   max_length=12)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# docs-encoder-decoder-with-tf-flax.txt


def test_tf_ed_load_pytorch_checkpoint_workaround(bert2bert_dir, tmp_path):
    _model = EncoderDecoderModel.from_pretrained(bert2bert_dir)
    _model.encoder.save_pretrained(tmp_path / "encoder")
    _model.decoder.save_pretrained(tmp_path / "decoder")
    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "encoder", tmp_path / "decoder", encoder_from_pt=True, decoder_from_pt=True
    )
    model.config = _model.config
    input_ids = BertTokenizer.from_pretrained(bert2bert_dir)("the tower is tall", return_tensors="np").input_ids
    generated = model.generate(input_ids, max_length=10)
    with torch.no_grad():
        expected = _model.eval().generate(torch.from_numpy(input_ids), max_length=10)
    np.testing.assert_array_equal(generated.numpy(), expected.numpy())


def test_tf_ed_bert2gpt2_forward_training_save_load_generate(bert_dir, gpt2_dir, tmp_path):
    model = TFEncoderDecoderModel.from_encoder_decoder_pretrained(bert_dir, gpt2_dir)
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    input_ids = tokenizer.encode("Hello, my dog is cute", add_special_tokens=True, return_tensors="np")  # Batch size 1
    outputs = model(input_ids=input_ids, decoder_input_ids=input_ids)
    outputs = model(input_ids=input_ids, decoder_input_ids=input_ids, labels=input_ids)
    loss, logits = outputs.loss, outputs.logits
    model.save_pretrained(tmp_path / "bert2gpt2")
    model = TFEncoderDecoderModel.from_pretrained(tmp_path / "bert2gpt2")
    generated = model.generate(input_ids, decoder_start_token_id=model.config.decoder.bos_token_id, max_length=8)

    ids = torch.from_numpy(input_ids)
    with torch.no_grad():
        expected = EncoderDecoderModel.from_pretrained(tmp_path / "bert2gpt2").eval()(
            input_ids=ids, decoder_input_ids=ids, labels=ids
        )  # fmt: skip
    assert abs(float(loss) - expected.loss.item()) <= 1e-5
    assert np.abs(logits.numpy() - expected.logits.numpy()).max() <= 1e-5
    _same_as_torch(generated, EncoderDecoderModel, tmp_path / "bert2gpt2", ids, decoder_start_token_id=ENDOFTEXT,
                   max_length=8)  # fmt: skip


def test_flax_ed_bert2gpt2_summarization(bert2gpt2_dir, bert_dir, gpt2_dir):
    model = FlaxEncoderDecoderModel.from_pretrained(bert2gpt2_dir)
    tokenizer_input = BertTokenizer.from_pretrained(bert_dir)
    tokenizer_output = GPT2Tokenizer.from_pretrained(gpt2_dir)
    article = """Sigma Alpha Epsilon is under fire for a video showing party-bound fraternity members
    singing a racist chant. SAE's national chapter suspended the students"""
    input_ids = tokenizer_input(article, add_special_tokens=True, return_tensors="np").input_ids
    # use GPT2's eos_token as the pad as well as eos token
    model.config.eos_token_id = model.config.decoder.eos_token_id
    model.config.pad_token_id = model.config.eos_token_id
    sequences = model.generate(input_ids, num_beams=4, max_length=12).sequences
    summary = tokenizer_output.batch_decode(sequences, skip_special_tokens=True)[0]
    assert isinstance(summary, str)
    _same_as_torch(sequences, EncoderDecoderModel, bert2gpt2_dir, torch.from_numpy(input_ids), num_beams=4,
                   max_length=12)  # fmt: skip


def test_tf_and_flax_ed_from_encoder_decoder_pretrained_save_load(bert_dir, gpt2_dir, tmp_path):
    inputs = {"input_ids": np.array([[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]], np.int32),
              "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.int32)}  # fmt: skip
    for cls in (TFEncoderDecoderModel, FlaxEncoderDecoderModel):
        saved = cls.from_encoder_decoder_pretrained(bert_dir, gpt2_dir)
        saved.save_pretrained(tmp_path / "bert2gpt2")
        model = cls.from_pretrained(tmp_path / "bert2gpt2")
        assert isinstance(model.config, splice.EncoderDecoderConfig)
        _assert_same_weights_and_logits(saved, model, inputs)
