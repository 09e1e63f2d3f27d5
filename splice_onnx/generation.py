"""Greedy, beam and sampling decoding in NumPy, step for step as transformers' `generate` (v5) does it.

`settings` merges `generation_config.json` with call arguments as `generate` does; `generate` runs a `step` function
(ids `[N, T]`, past, beam reorder) that the ONNX model provides. Beam search follows transformers' vectorised beam
search (top `2 * num_beams` continuations, finished hypotheses kept by length-penalised score, its early-stop
heuristic) in float32, so the ids equal PyTorch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# transformers' `GenerationConfig` defaults for the settings this runtime implements.
DEFAULTS: dict[str, Any] = {
    "max_length": 20, "max_new_tokens": None, "min_length": 0, "min_new_tokens": None, "num_beams": 1,
    "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "length_penalty": 1.0,
    "early_stopping": False, "num_return_sequences": 1, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    "bos_token_id": None, "decoder_start_token_id": None, "use_cache": True,
}  # fmt: skip
# Settings `generate` knows that this runtime does not implement: set to anything but their default, they raise.
UNSUPPORTED = (
    "bad_words_ids", "suppress_tokens", "begin_suppress_tokens", "num_beam_groups", "penalty_alpha", "typical_p",
    "epsilon_cutoff", "eta_cutoff", "min_p", "top_h", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty",
    "sequence_bias", "constraints", "force_words_ids", "guidance_scale", "diversity_penalty", "watermarking_config",
    "encoder_repetition_penalty", "renormalize_logits", "assistant_model", "prompt_lookup_num_tokens",
)  # fmt: skip
_IGNORED_DEFAULTS = {
    "diversity_penalty": 0.0,
    "encoder_repetition_penalty": 1.0,
    "renormalize_logits": False,
    "num_beam_groups": 1,
}

Step = Callable[[np.ndarray, Any, np.ndarray | None], tuple[np.ndarray, Any]]


def settings(config: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The effective settings: defaults < `generation_config.json` < call arguments (`None` arguments ignored)."""
    merged = dict(DEFAULTS)
    merged.update({k: v for k, v in config.items() if k in DEFAULTS or k in UNSUPPORTED})
    unknown = sorted(k for k in overrides if k not in DEFAULTS and k not in UNSUPPORTED and k != "seed")
    if unknown:
        raise ValueError(f"generate() got {unknown}, which this runtime does not know; it takes {sorted(DEFAULTS)}.")
    merged.update({k: v for k, v in overrides.items() if v is not None})
    for name in UNSUPPORTED:
        value = merged.get(name)
        if value not in (None, [], {}, _IGNORED_DEFAULTS.get(name, None)):
            raise ValueError(
                f"{name}={value!r}: the ONNX runtime does not implement this generation setting; unset it (in "
                "generation_config.json or the call) or generate with the PyTorch model."
            )
    eos = merged["eos_token_id"]
    merged["eos_token_id"] = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if merged["pad_token_id"] is None and merged["eos_token_id"]:
        merged["pad_token_id"] = merged["eos_token_id"][0]  # as `generate` does (it warns)
    if merged["do_sample"] and merged["num_beams"] > 1:
        raise ValueError("do_sample=True with num_beams>1 (beam sampling) is not implemented here; use one of them.")
    if merged["num_return_sequences"] > merged["num_beams"] and not merged["do_sample"]:
        raise ValueError(
            f"num_return_sequences={merged['num_return_sequences']} exceeds num_beams={merged['num_beams']}; "
            "raise num_beams or lower num_return_sequences."
        )
    return merged


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))).astype(np.float32)


def process(scores: np.ndarray, ids: np.ndarray, cfg: dict[str, Any], prompt_len: int) -> np.ndarray:
    """transformers' logits processors, in its order: repetition penalty, no-repeat n-grams, min length, min new
    tokens, forced BOS/EOS; then (sampling) temperature, top-k, top-p."""
    scores = scores.copy()
    cur_len = ids.shape[1]
    if cfg["repetition_penalty"] != 1.0:
        penalty = cfg["repetition_penalty"]
        gathered = np.take_along_axis(scores, ids, axis=1)
        gathered = np.where(gathered < 0, gathered * penalty, gathered / penalty)
        np.put_along_axis(scores, ids, gathered, axis=1)
    n = cfg["no_repeat_ngram_size"]
    if n and cur_len + 1 >= n:
        for row, tokens in enumerate(ids.tolist()):
            seen: dict[tuple, list[int]] = {}
            for start in range(len(tokens) - n + 1):
                seen.setdefault(tuple(tokens[start : start + n - 1]), []).append(tokens[start + n - 1])
            banned = seen.get(tuple(tokens[cur_len + 1 - n : cur_len]), [])
            scores[row, banned] = -np.inf
    eos = cfg["eos_token_id"]
    if eos and cur_len < cfg["min_length"]:
        scores[:, eos] = -np.inf
    if eos and cfg["min_new_tokens"] is not None and cur_len - prompt_len < cfg["min_new_tokens"]:
        scores[:, eos] = -np.inf
    if cfg["forced_bos_token_id"] is not None and cur_len == 1:
        scores[:] = -np.inf
        scores[:, cfg["forced_bos_token_id"]] = 0
    forced_eos = cfg["forced_eos_token_id"]
    if forced_eos is not None and cur_len == cfg["max_length"] - 1:
        scores[:] = -np.inf
        scores[:, [forced_eos] if isinstance(forced_eos, int) else forced_eos] = 0
    if cfg["do_sample"]:
        if cfg["temperature"] != 1.0:
            scores = scores / np.float32(cfg["temperature"])
        top_k = cfg["top_k"]
        if top_k and top_k < scores.shape[-1]:
            kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
            scores = np.where(scores < kth, -np.inf, scores)
        if cfg["top_p"] < 1.0:
            order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as transformers' top-p warper
            sorted_scores = np.take_along_axis(scores, order, axis=-1)
            probs = np.exp(sorted_scores - sorted_scores.max(axis=-1, keepdims=True))
            cumulative = np.cumsum(probs / probs.sum(axis=-1, keepdims=True), axis=-1)
            remove = cumulative <= 1 - cfg["top_p"]
            remove[:, -1] = False
            np.put_along_axis(scores, order, np.where(remove, -np.inf, sorted_scores), axis=-1)
    return scores.astype(np.float32)


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties to the lower index (as torch.topk on CPU). Only the
    values at or above each row's k-th largest are sorted (a full sort of `beams x vocabulary` scores per step was
    a third of beam search's time)."""
    if k >= values.shape[-1]:
        return np.argsort(-values, axis=-1, kind="stable")[:, :k]
    kth = np.partition(values, -k, axis=-1)[:, -k:].min(axis=-1)
    top = np.empty((values.shape[0], k), dtype=np.int64)
    for row, (scores, threshold) in enumerate(zip(values, kth)):
        candidates = np.flatnonzero(scores >= threshold)  # ascending indices, ties at the threshold included
        top[row] = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    return top


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    while index.ndim < values.ndim:
        index = index[..., None]
    return np.take_along_axis(values, index, axis=1)


def greedy_or_sample(step: Step, ids: np.ndarray, cfg: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """`generate` with `num_beams=1`: argmax (or a draw from the processed distribution) until EOS or max_length."""
    prompt_len = ids.shape[1]
    unfinished = np.ones(ids.shape[0], dtype=bool)
    eos, pad = cfg["eos_token_id"], cfg["pad_token_id"]
    past = None
    inputs = ids
    while ids.shape[1] < cfg["max_length"]:
        logits, past = step(inputs, past, None)
        scores = process(logits[:, -1, :].astype(np.float32), ids, cfg, prompt_len)
        if cfg["do_sample"]:
            probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            cumulative = probs.cumsum(axis=-1)
            draws = rng.random((scores.shape[0], 1)) * cumulative[:, -1:]
            tokens = np.minimum((cumulative < draws).sum(axis=-1), scores.shape[-1] - 1)
        else:
            tokens = scores.argmax(axis=-1)
        if eos:
            tokens = np.where(unfinished, tokens, pad)
        ids = np.concatenate([ids, tokens[:, None].astype(np.int64)], axis=1)
        inputs = ids[:, -1:]
        if eos:
            unfinished &= ~np.isin(tokens, eos)
        if not unfinished.any():
            break
    return ids


def beam_search(step: Step, ids: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """transformers' beam search (`_beam_search`), vectorised the same way, on `ids` `[B, T]` (expanded here)."""
    num_beams, max_length = cfg["num_beams"], cfg["max_length"]
    length_penalty, early_stopping = cfg["length_penalty"], cfg["early_stopping"]
    eos, pad = cfg["eos_token_id"], cfg["pad_token_id"]
    batch, cur_len = ids.shape
    prompt_len = cur_len
    keep = max(2, 1 + len(eos)) * num_beams
    top_num_beam_mask = np.arange(keep) < num_beams
    fill = (pad if pad else eos[0]) if eos else -1  # transformers: `pad or eos[0] if eos is not None else -1`
    running = np.full((batch, num_beams, max_length), fill, dtype=np.int64)
    running[:, :, :cur_len] = ids[:, None, :]
    sequences = running.copy()
    running_scores = np.zeros((batch, num_beams), dtype=np.float32)
    running_scores[:, 1:] = -1e9
    beam_scores = np.full((batch, num_beams), -1e9, dtype=np.float32)
    finished = np.zeros((batch, num_beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)
    hits = np.zeros((batch, num_beams), dtype=bool)
    running_indices = np.full((batch, num_beams, max_length - cur_len), -1, dtype=np.int64)
    beam_indices = running_indices.copy()
    past, reorder = None, None
    flat = running[:, :, :cur_len].reshape(batch * num_beams, cur_len)
    inputs = flat
    while True:
        logits, past = step(inputs, past, reorder)
        log_probs = _log_softmax(logits[:, -1, :].astype(np.float32))
        log_probs = process(log_probs, flat, cfg, prompt_len)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, num_beams, vocab) + running_scores[:, :, None]
        log_probs = log_probs.reshape(batch, num_beams * vocab)
        top = _topk(log_probs, keep)
        top_scores = np.take_along_axis(log_probs, top, axis=1)
        top_beams = top // vocab
        top_indices = _gather(running_indices, top_beams)
        top_sequences = _gather(running, top_beams)
        top_ids = top % vocab
        top_sequences[:, :, cur_len] = top_ids
        top_indices[:, :, cur_len - prompt_len] = top_beams + np.arange(batch)[:, None] * num_beams
        # stopping criteria on the K continuations: max length, EOS
        hits = np.full((batch, keep), cur_len + 1 >= max_length)
        if eos:
            hits |= np.isin(top_ids, eos)
        # running beams for the next step
        top_running = (top_scores + hits.astype(np.float32) * np.float32(-1.0e9)).astype(np.float32)
        nxt = _topk(top_running, num_beams)
        running = _gather(top_sequences, nxt)
        running_scores = _gather(top_running, nxt)
        running_indices = _gather(top_indices, nxt)
        # finished hypotheses
        just_finished = hits & top_num_beam_mask[None, :]
        scores = (top_scores / np.float32((cur_len + 1 - prompt_len) ** length_penalty)).astype(np.float32)
        full = finished.all(axis=-1, keepdims=True) & (early_stopping is True)
        scores = scores + full.astype(np.float32) * np.float32(-1.0e9)
        scores = scores + (~improvable).astype(np.float32) * np.float32(-1.0e9)
        scores = (scores + (~just_finished).astype(np.float32) * np.float32(-1.0e9)).astype(np.float32)
        merged_scores = np.concatenate([beam_scores, scores], axis=1)
        best = _topk(merged_scores, num_beams)
        sequences = _gather(np.concatenate([sequences, top_sequences], axis=1), best)
        beam_scores = _gather(merged_scores, best)
        beam_indices = _gather(np.concatenate([beam_indices, top_indices], axis=1), best)
        finished = _gather(np.concatenate([finished, just_finished], axis=1), best)
        reorder = running_indices[..., cur_len - prompt_len].reshape(-1)
        cur_len += 1
        # early-stop heuristic
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_scores[:, :1] / np.float32(best_length**length_penalty)
        worst_finished = np.where(finished, beam_scores.min(axis=1, keepdims=True), np.float32(-1.0e9))
        improvable = improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
        open_beam = not (finished.all() and early_stopping is True)
        if not (improvable.any() and open_beam and not hits.all()):
            break
        flat = running[:, :, :cur_len].reshape(batch * num_beams, cur_len)
        inputs = flat[:, -1:]
    count = cfg["num_return_sequences"]
    sequences = sequences[:, :count].reshape(batch * count, -1)
    beam_indices = beam_indices[:, :count].reshape(batch * count, -1)
    generated = int((beam_indices != -1).sum(axis=1).max())
    return sequences[:, : prompt_len + generated]
