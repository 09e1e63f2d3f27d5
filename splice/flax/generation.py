"""Jit-compiled generation for splice's JAX composites: greedy, sampling and beam search with a fixed-size cache.

Each search is one `jax.lax.while_loop` over decoding steps with static shapes (`[B, max_length]` sequences, a
`[B, H, max_length, D/H]` self-attention cache per layer), so it compiles once per input shape and settings. The
rules are transformers' (PyTorch) ones, so the same weights give the same ids: greedy and sampled sequences are padded
with `pad_token_id` once finished; beam search keeps `2 * num_beams` candidates per step, scores finished hypotheses
`sum log p / generated_length ** length_penalty` and stops with transformers' early-stopping heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from transformers import GenerationConfig

# GenerationConfig fields whose effect is not implemented here, with the value that means "off".
UNSUPPORTED = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "force_words_ids": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "num_beam_groups": 1, "diversity_penalty": 0.0, "suppress_tokens": None,
    "begin_suppress_tokens": None, "sequence_bias": None, "constraints": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "min_p": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "guidance_scale": None, "watermarking_config": None,
}  # fmt: skip


@dataclass(frozen=True)
class SearchSettings:
    """The static settings of one compiled search (hashable: they key the compilation cache)."""

    max_length: int
    decoder_start_token_id: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...]
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    # Top-k by a stable sort instead of `lax.top_k` (for TensorFlow: see `splice._compat.JAX2TF_SORT_TOP_K`).
    sort_top_k: bool = False


def settings_from(generation_config: Any, special: dict[str, Any]) -> SearchSettings:
    """`SearchSettings` from a transformers `GenerationConfig` (already updated with the call's kwargs) and the
    resolved special tokens; a setting this implementation would ignore is a `NotImplementedError`."""
    defaults = GenerationConfig._get_default_generation_params()

    def get(name: str) -> Any:  # transformers v5 leaves unset fields None and applies its defaults at generate time
        value = getattr(generation_config, name, None)
        return defaults.get(name) if value is None else value

    for name, off in UNSUPPORTED.items():
        value = get(name)
        if value is not None and value != off and not (off is None and not value):
            raise NotImplementedError(
                f"generation_config.{name}={value!r} is not implemented by splice's JAX/TF generate (it would be "
                f"ignored); set it to {off!r} or generate with the PyTorch class."
            )
    if get("num_beams") > 1 and get("do_sample"):
        raise NotImplementedError("Beam sampling (num_beams > 1 with do_sample=True) is not implemented in JAX/TF.")
    if get("num_return_sequences") > get("num_beams"):
        raise ValueError(
            f"num_return_sequences={get('num_return_sequences')} exceeds num_beams={get('num_beams')}: splice's "
            "JAX/TF search returns at most num_beams sequences per input."
        )
    if special["decoder_start_token_id"] is None:
        raise ValueError("decoder_start_token_id is not set: set `model.config.decoder_start_token_id`.")
    eos = special["eos_token_id"]
    eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
    pad = special["pad_token_id"] if special["pad_token_id"] is not None else (eos[0] if eos else 0)
    return SearchSettings(
        max_length=get("max_length"), decoder_start_token_id=special["decoder_start_token_id"], pad_token_id=pad,
        eos_token_ids=eos, num_beams=get("num_beams"), do_sample=get("do_sample"),
        temperature=float(get("temperature")),
        top_k=int(get("top_k")), top_p=float(get("top_p")), length_penalty=float(get("length_penalty")),
        early_stopping=get("early_stopping"), num_return_sequences=get("num_return_sequences"),
    )  # fmt: skip


def _is_eos(tokens: jax.Array, s: SearchSettings) -> jax.Array:
    hit = jnp.zeros(tokens.shape, bool)
    for eos in s.eos_token_ids:
        hit = hit | (tokens == eos)
    return hit


def _top_k(x: jax.Array, k: int, s: SearchSettings) -> tuple[jax.Array, jax.Array]:
    """The `k` largest values of the last axis and their indices, ties to the lower index (as `lax.top_k`)."""
    if not s.sort_top_k:
        return jax.lax.top_k(x, k)
    index = jnp.argsort(-x, axis=-1, stable=True)[..., :k]
    return jnp.take_along_axis(x, index, axis=-1), index


def _warp(logits: jax.Array, s: SearchSettings) -> jax.Array:
    """transformers' sampling warpers, in its order: temperature, top-k, top-p (nucleus)."""
    logits = logits / s.temperature if s.temperature != 1.0 else logits
    neg = jnp.finfo(logits.dtype).min
    if 0 < s.top_k < logits.shape[-1]:
        kth = _top_k(logits, s.top_k, s)[0][..., -1:]  # [B, 1]
        logits = jnp.where(logits < kth, neg, logits)
    if s.top_p < 1.0:
        order = jnp.argsort(logits, axis=-1)  # ascending, as transformers sorts
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cumulative <= 1 - s.top_p
        remove_sorted = remove_sorted.at[..., -1].set(False)  # keep at least one token
        remove = jnp.zeros_like(remove_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
        logits = jnp.where(remove, neg, logits)
    return logits


def greedy_or_sample(
    step: Any, cache: dict, batch: int, s: SearchSettings, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Greedy (or sampling) decoding. `step(ids [N, 1], cache) -> (logits [N, 1, V], cache)`. Returns sequences
    `[B, max_length]` and the length actually generated (later columns are padding)."""
    sequences = jnp.full((batch, s.max_length), s.pad_token_id, jnp.int32).at[:, 0].set(s.decoder_start_token_id)

    def body(state):
        sequences, cur, finished, cache, key = state
        logits, cache = step(jax.lax.dynamic_slice_in_dim(sequences, cur - 1, 1, axis=1), cache)
        scores = logits[:, -1].astype(jnp.float32)  # [B, V]
        if s.do_sample:
            key, sub = jax.random.split(key)
            tokens = jax.random.categorical(sub, _warp(scores, s), axis=-1)
        else:
            tokens = jnp.argmax(scores, axis=-1)
        tokens = jnp.where(finished, s.pad_token_id, tokens).astype(jnp.int32)  # [B]
        sequences = jax.lax.dynamic_update_slice_in_dim(sequences, tokens[:, None], cur, axis=1)
        return sequences, cur + 1, finished | _is_eos(tokens, s), cache, key

    def cond(state):
        _, cur, finished, _, _ = state
        return (cur < s.max_length) & ~jnp.all(finished)

    init = (sequences, jnp.array(1, jnp.int32), jnp.zeros((batch,), bool), cache, key)
    sequences, cur, *_ = jax.lax.while_loop(cond, body, init)
    return sequences, cur


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """`x[b, index[b, j]]` for `x` `[B, K, ...]`, `index` `[B, J]` → `[B, J, ...]`."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step: Any, cache: dict, batch: int, s: SearchSettings) -> tuple[jax.Array, jax.Array]:
    """Beam search over `num_beams` hypotheses per input (the cache holds `B * num_beams` rows, beam-major within
    each input). Returns the best `num_return_sequences` per input, `[B * R, max_length]`, and the output length."""
    k, length, prompt = s.num_beams, s.max_length, 1
    keep = max(2, 1 + len(s.eos_token_ids)) * k  # candidates per step: enough to continue `k` unfinished beams
    top_k_mask = jnp.arange(keep) < k  # only the `k` best candidates may finish a hypothesis
    # transformers' fill value for beam outputs: the pad id, unless it is 0 (then the first eos), -1 with no eos.
    fill = (s.pad_token_id or s.eos_token_ids[0]) if s.eos_token_ids else -1
    running = jnp.full((batch, k, length), fill, jnp.int32).at[:, :, 0].set(s.decoder_start_token_id)
    running_scores = jnp.zeros((batch, k)).at[:, 1:].set(-1e9)  # identical beams: only the first one continues

    def body(state):
        cur, running, running_scores, sequences, scores, lengths, finished, open_, cache = state
        ids = jax.lax.dynamic_slice_in_dim(running, cur - 1, 1, axis=2).reshape(batch * k, 1)  # [B*K, 1]
        logits, cache = step(ids, cache)
        log_probs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)  # [B*K, V]
        vocab = log_probs.shape[-1]
        log_probs = (log_probs.reshape(batch, k, vocab) + running_scores[:, :, None]).reshape(batch, k * vocab)
        top_scores, top_index = _top_k(log_probs, keep, s)  # [B, 2K]
        source, tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        candidates = jax.lax.dynamic_update_slice_in_dim(_gather(running, source), tokens[:, :, None], cur, axis=2)
        hits = _is_eos(tokens, s) | (cur + 1 >= length)  # [B, 2K]: the candidate ends here

        # The `k` best candidates that go on (finished ones pushed out).
        alive = top_scores - 1e9 * hits
        order = _top_k(alive, k, s)[1]  # [B, K]
        running, running_scores = _gather(candidates, order), _gather(alive, order)
        rows = (jnp.arange(batch)[:, None] * k + _gather(source, order)).reshape(-1)  # [B*K] cache rows to keep
        cache = {
            **cache,
            "layers": [{**layer, "k": layer["k"][rows], "v": layer["v"][rows]} for layer in cache["layers"]],
        }

        # Finished hypotheses: merge the new ones with the kept ones, keep the `k` best.
        just = hits & top_k_mask[None, :]
        normed = top_scores / ((cur + 1 - prompt) ** s.length_penalty)
        full = jnp.all(finished, axis=-1, keepdims=True) & (s.early_stopping is True)
        normed = normed - 1e9 * (full | ~open_ | ~just)
        merged = jnp.concatenate([scores, normed], axis=1)  # [B, 3K]
        best = _top_k(merged, k, s)[1]
        sequences = _gather(jnp.concatenate([sequences, candidates], axis=1), best)
        scores = _gather(merged, best)
        lengths = _gather(jnp.concatenate([lengths, jnp.full((batch, keep), cur + 1, jnp.int32)], axis=1), best)
        finished = _gather(jnp.concatenate([finished, just], axis=1), best)

        # transformers' heuristic: can a running beam still beat the worst finished hypothesis?
        cur = cur + 1
        best_length = length - prompt if (s.early_stopping == "never" and s.length_penalty > 0) else cur - prompt
        possible = running_scores[:, :1] / (best_length**s.length_penalty)
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -1e9)
        open_ = open_ & jnp.any(possible > worst, axis=-1, keepdims=True)
        go_on = jnp.any(open_) & ~(jnp.all(finished) & (s.early_stopping is True)) & ~jnp.all(hits)
        return cur, running, running_scores, sequences, scores, lengths, finished, open_, cache, go_on

    def cond(state):
        return state[-1]

    init = (
        jnp.array(1, jnp.int32), running, running_scores, running, jnp.full((batch, k), -1e9),
        jnp.ones((batch, k), jnp.int32), jnp.zeros((batch, k), bool), jnp.ones((batch, 1), bool), cache,
        jnp.array(True),
    )  # fmt: skip
    state = jax.lax.while_loop(cond, lambda st: body(st[:-1]), init)
    sequences, lengths = state[3], state[5]
    r = s.num_return_sequences
    return sequences[:, :r].reshape(batch * r, length), jnp.max(lengths[:, :r])
