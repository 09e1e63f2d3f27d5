"""Paired bootstrap intervals over images for differences in CIDEr and BLEU-4 between two captioners.

Both metrics are computed as `splice.training.metrics.caption_metrics` computes them (pycocoevalcap, the same
tokenization), but kept per image so a resample of images can be scored without rescoring: CIDEr-D is the mean of
per-image scores (its IDF taken once from the whole set's references, as for the full-set score), BLEU-4 is the corpus
score of summed per-image n-gram counts (pycocoevalcap's "closest" reference length). Several seeds of one system
are pooled per image (CIDEr averaged, BLEU counts summed), so an interval covers the seed-averaged difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .metrics import tokenize_caption

TINY, SMALL = 1e-15, 1e-9  # pycocoevalcap's smoothing constants, so full-set scores equal its own


def per_image_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    r"""
    Per-image CIDEr-D and BLEU-4 counts of one captioner's outputs.

    Args:
        predictions: one caption per image.
        references: the reference captions of each image.

    Returns:
        `cider` `[N]` and `bleu` `[N, 10]` (test length, closest reference length, 4 guessed and 4 correct n-gram
        counts): the inputs of [`cider_of`] and [`bleu4_of`].
    """
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test
    from pycocoevalcap.cider.cider import Cider

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    refs = {i: [tokenize_caption(r) for r in group] for i, group in enumerate(references)}
    hyps = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    cider = np.asarray(Cider().compute_score(refs, hyps)[1], dtype=np.float64)  # [N]
    rows = []
    for i in range(len(predictions)):
        cooked = cook_test(hyps[i][0], cook_refs(refs[i]), eff="closest")
        rows.append([cooked["testlen"], cooked["reflen"], *cooked["guess"], *cooked["correct"]])
    return {"cider": cider, "bleu": np.asarray(rows, dtype=np.float64)}


def pool_seeds(scores: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One system's per-image scores over seeds: CIDEr averaged, BLEU counts summed (corpus BLEU over all outputs)."""
    return {"cider": np.mean([s["cider"] for s in scores], axis=0), "bleu": np.sum([s["bleu"] for s in scores], axis=0)}


def cider_of(scores: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> float:
    """CIDEr-D of the images `rows` (all by default)."""
    return float(scores["cider"][rows].mean())


def bleu4_of(scores: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> float:
    """Corpus BLEU-4 of the images `rows` (all by default), as pycocoevalcap computes it from summed counts."""
    totals = scores["bleu"][rows].sum(axis=0)  # [10]
    testlen, reflen, guess, correct = totals[0], totals[1], totals[2:6], totals[6:10]
    bleu = math.prod((c + TINY) / (g + SMALL) for c, g in zip(correct, guess)) ** 0.25
    ratio = (testlen + TINY) / (reflen + SMALL)
    return bleu * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def paired_difference(
    first: dict[str, np.ndarray], second: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    r"""
    `first` minus `second` on the same images, with a 95% percentile bootstrap interval (images resampled with
    replacement, the same resample for both).

    Returns:
        For `cider` and `bleu4`: `{"difference", "low", "high"}`.
    """
    count = len(first["cider"])
    if len(second["cider"]) != count:
        raise ValueError(f"the systems were scored on {count} and {len(second['cider'])} images; pair the same images")
    rng = np.random.default_rng(seed)
    result = {}
    for name, metric in (("cider", cider_of), ("bleu4", bleu4_of)):
        draws = []
        for _ in range(resamples):
            rows = rng.integers(0, count, count)
            draws.append(metric(first, rows) - metric(second, rows))
        low, high = np.percentile(draws, [2.5, 97.5])
        result[name] = {"difference": metric(first) - metric(second), "low": float(low), "high": float(high)}
    return result
