"""Caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr) and OCR metrics (CER, WER, exact match), safe with -100 padding.

Captions are scored with `pycocoevalcap` and OCR with `jiwer` (both in the `train` extra). COCO evaluation normally
tokenizes with Stanford CoreNLP's PTBTokenizer, which needs Java and a CoreNLP download; instead captions are tokenized
here by lowercasing, replacing punctuation with spaces and splitting on whitespace, so scores are close to but not
identical with the official COCO numbers.
"""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers.utils import logging

if TYPE_CHECKING:
    from pycocoevalcap.meteor.meteor import Meteor
    from transformers import EvalPrediction

from ..processing import decode_predictions

logger = logging.get_logger(__name__)

_PUNCTUATION = re.compile(r"[^\w\s]")


def tokenize_caption(text: str) -> str:
    r"""
    The simple tokenization used instead of PTBTokenizer: lowercase, punctuation to spaces, single spaces.

    Args:
        text (`str`): a caption.

    Returns:
        `str`: space-separated tokens, e.g. `"A red circle, left."` -> `"a red circle left"`.
    """
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


@functools.cache
def _meteor_scorer() -> Meteor:
    # The METEOR jar loads its paraphrase tables when it starts (seconds), so one Java process is kept for
    # the life of the interpreter and serves every later evaluation.
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def caption_metrics(
    predictions: Sequence[str], references: Sequence[Sequence[str]] | Sequence[str], meteor: bool = True
) -> dict[str, float]:
    r"""
    COCO caption metrics of generated captions against one or more references per image.

    Args:
        predictions (`Sequence[str]`): one generated caption per image; empty strings score 0.
        references (`Sequence[Sequence[str]]` or `Sequence[str]`): the reference captions of each image, or a single
            reference per image. CIDEr's IDF is computed over these references, as in COCO evaluation, so CIDEr
            depends on the whole evaluated set (it is 0 for a set of one image).
        meteor (`bool`, *optional*, defaults to `True`): also compute METEOR when Java is on `PATH` (it is skipped, with
            a logged note, when it is not). The first METEOR call starts a Java process that takes several seconds.

    Returns:
        `dict[str, float]`: `bleu4`, `rouge_l`, `cider` and, when computed, `meteor`.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"bleu4": 0.0, "rouge_l": 0.0, "cider": 0.0}
    refs = {i: [tokenize_caption(r) for r in ([r] if isinstance(r, str) else r)] for i, r in enumerate(references)}
    hyps = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    result = {
        "bleu4": float(Bleu(4).compute_score(refs, hyps, verbose=0)[0][3]),
        "rouge_l": float(Rouge().compute_score(refs, hyps)[0]),
        "cider": float(Cider().compute_score(refs, hyps)[0]),
    }
    if meteor and shutil.which("java"):
        result["meteor"] = float(_meteor_scorer().compute_score(refs, hyps)[0])
    elif meteor:
        logger.warning_once("METEOR skipped: it runs on Java and `java` is not on PATH.")
    return result


def ocr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    r"""
    Character and word error rates (corpus level: total edits over total reference length) and exact match.

    Args:
        predictions (`Sequence[str]`): recognised texts.
        references (`Sequence[str]`): ground-truth texts, compared as they are (case and spaces matter for CER).

    Returns:
        `dict[str, float]`: `cer`, `wer` and `exact_match` (fraction of texts recognised exactly).
    """
    import jiwer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"cer": 0.0, "wer": 0.0, "exact_match": 0.0}
    return {
        "cer": float(jiwer.cer(reference=list(references), hypothesis=list(predictions))),
        "wer": float(jiwer.wer(reference=list(references), hypothesis=list(predictions))),
        "exact_match": sum(p == r for p, r in zip(predictions, references)) / len(references),
    }


def _token_ids(predictions: Any, label_ids: Any) -> Any:
    # Without `predict_with_generate` the Trainer hands over logits, possibly in a tuple with other model outputs
    # (e.g. the encoder's last hidden state); greedy ids from them still give a usable, if optimistic, score.
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if getattr(predictions, "ndim", 2) != 3:
        return predictions
    ids = np.asarray(predictions).argmax(-1)
    labels = np.asarray(label_ids)
    # Teacher-forced logits line up with the labels: positions the labels ignore (after EOS) are ignored here too.
    return np.where(labels < 0, -100, ids) if labels.shape == ids.shape else ids


def build_compute_metrics(
    tokenizer: Any, task: str = "caption", meteor: bool = True
) -> Callable[[EvalPrediction], dict[str, float]]:
    r"""
    A `compute_metrics` function for `Seq2SeqTrainer(..., predict_with_generate=True)`.

    Args:
        tokenizer: the tokenizer that decodes both generations and labels.
        task (`str`, *optional*, defaults to `"caption"`): `"caption"` for [`caption_metrics`] (one reference per
            image: the labels) or `"ocr"` for [`ocr_metrics`].
        meteor (`bool`, *optional*, defaults to `True`): passed to [`caption_metrics`].

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: decodes `predictions` and `label_ids`, both of which may hold
        -100, and returns the task's metrics.
    """
    if task not in ("caption", "ocr"):
        raise ValueError(f"task must be 'caption' or 'ocr', got {task!r}")

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions = decode_predictions(tokenizer, _token_ids(eval_prediction.predictions, eval_prediction.label_ids))
        references = decode_predictions(tokenizer, eval_prediction.label_ids)
        if task == "ocr":
            return ocr_metrics(predictions, references)
        return caption_metrics(predictions, references, meteor=meteor)

    return compute_metrics
