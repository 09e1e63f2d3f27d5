"""Caption and OCR metrics, and decoding of predictions and labels padded with -100."""

import shutil

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from splice.data.builtin import train_tokenizer
from splice.training import metrics
from splice.training.metrics import build_compute_metrics, caption_metrics, decode_predictions, ocr_metrics

CAPTIONS = [
    "a red circle on the left",
    "a blue square to the right of a green triangle",
    "there is a yellow star at the top",
    "the purple circle is above the orange square",
]


def test_identical_captions_score_best():
    perfect = caption_metrics(CAPTIONS, [[c] for c in CAPTIONS], meteor=False)
    assert set(perfect) == {"bleu4", "rouge_l", "cider"}
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    shuffled = caption_metrics(CAPTIONS[1:] + CAPTIONS[:1], CAPTIONS, meteor=False)
    unrelated = caption_metrics(["completely unrelated words here"] * 4, CAPTIONS, meteor=False)
    assert perfect["cider"] > shuffled["cider"] > unrelated["cider"] == 0
    assert all(perfect[k] > shuffled[k] >= unrelated[k] for k in perfect)


def test_tokenization_multiple_references_and_empty_predictions():
    # Case and punctuation are ignored by the simple tokenization, as by COCO's PTBTokenizer.
    assert metrics.tokenize_caption("A Red circle,  on the LEFT.") == "a red circle on the left"
    references = [[c, "something else entirely"] for c in CAPTIONS]
    assert caption_metrics([c.upper() + "!" for c in CAPTIONS], references, meteor=False)["bleu4"] > 0.99
    empty = caption_metrics([""] * 4, CAPTIONS, meteor=False)
    assert empty == {"bleu4": pytest.approx(0, abs=1e-6), "rouge_l": 0.0, "cider": 0.0}
    assert caption_metrics([], [], meteor=False) == {"bleu4": 0.0, "rouge_l": 0.0, "cider": 0.0}
    with pytest.raises(ValueError):
        caption_metrics(["a"], ["a", "b"])


def test_ocr_metrics_hand_checked():
    result = ocr_metrics(["hallo world"], ["hello world"])
    assert result["cer"] == pytest.approx(1 / 11) and result["wer"] == pytest.approx(0.5)
    assert result["exact_match"] == 0
    # Corpus level: 1 character edit over 11 + 3 reference characters, 1 word edit over 2 + 1 words.
    result = ocr_metrics(["hallo world", "abc"], ["hello world", "abc"])
    assert result == {"cer": pytest.approx(1 / 14), "wer": pytest.approx(1 / 3), "exact_match": 0.5}


def test_decode_predictions_replaces_negative_ids():
    tokenizer = train_tokenizer(CAPTIONS)
    ids = tokenizer(CAPTIONS[:2], padding=True, return_tensors="pt").input_ids
    ids[ids == tokenizer.pad_token_id] = -100
    assert decode_predictions(tokenizer, ids) == CAPTIONS[:2]
    ragged = [tokenizer(CAPTIONS[0]).input_ids + [-100], tokenizer(CAPTIONS[1]).input_ids]
    assert decode_predictions(tokenizer, ragged) == CAPTIONS[:2]


def _padded(tokenizer, texts, width, prefix=()):
    """Ids as Seq2SeqTrainer gathers them: right-padded with -100 to a common width."""
    ids = np.full((len(texts), width), -100)
    for row, text in zip(ids, texts):
        encoded = list(prefix) + tokenizer(text).input_ids
        row[: len(encoded)] = encoded
    return ids


@pytest.mark.parametrize("task", ["caption", "ocr"])
def test_compute_metrics_with_minus_100_in_predictions_and_labels(task):
    texts = CAPTIONS if task == "caption" else ["hello world", "abc 42", "Stop", "open door"]
    tokenizer = train_tokenizer(texts, kind="word" if task == "caption" else "char")
    # Generations start with the decoder start token and end with EOS, then -100 where another batch was longer.
    predictions = _padded(tokenizer, texts[:3] + ["a"], 24, prefix=[tokenizer.bos_token_id])
    compute_metrics = build_compute_metrics(tokenizer, task=task, meteor=False)
    result = compute_metrics(EvalPrediction(predictions=predictions, label_ids=_padded(tokenizer, texts, 30)))
    if task == "caption":
        assert set(result) == {"bleu4", "rouge_l", "cider"} and 0 < result["bleu4"] < 1
    else:
        assert result["exact_match"] == 0.75 and 0 < result["cer"] < 1


def test_compute_metrics_accepts_logits_tuple():
    tokenizer = train_tokenizer(CAPTIONS)
    labels = _padded(tokenizer, CAPTIONS, 12)
    # One-hot "logits" of the labels, in a tuple with another output, as the Trainer gives without generation; where
    # the labels are -100 they predict a real word, which must be ignored.
    word = tokenizer.convert_tokens_to_ids("red")
    logits = torch.nn.functional.one_hot(torch.tensor(np.where(labels < 0, word, labels)), len(tokenizer)).float()
    result = build_compute_metrics(tokenizer, meteor=False)(
        EvalPrediction(predictions=(logits.numpy(), np.zeros((4, 3))), label_ids=labels)
    )
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        build_compute_metrics(tokenizer, task="translation")


def test_meteor_skipped_without_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(metrics, "_meteor_scorer", lambda: pytest.fail("METEOR must not start without Java"))
    assert "meteor" not in caption_metrics(CAPTIONS, CAPTIONS)


def test_meteor_with_java():
    # The only test that starts the METEOR jar (it takes seconds); later calls reuse the process. Java is part of the
    # test environment (.ci/run installs it where missing).
    perfect = caption_metrics(CAPTIONS, CAPTIONS)
    shuffled = caption_metrics(CAPTIONS[1:] + CAPTIONS[:1], CAPTIONS)
    assert perfect["meteor"] > 0.9 > shuffled["meteor"]
