"""Joint CTC–attention training: an auxiliary CTC head on the encoder's token states (Kim, Hori & Watanabe, 2017).

The head is one `nn.Linear(E, V)` from each encoder token state to the decoder's vocabulary, blank included. CTC
needs no alignment between the states and the target characters, and it teaches the encoder a monotonic left-to-right
alignment much sooner than cross-attention finds one from scratch; the attention decoder then reads states that already
separate the characters. The head only adds a training loss: generation never uses it.

It fits targets at character level (or any unit that the encoder emits in order, at most one per token), with the
encoder's tokens ordered along the sequence (text-line columns, speech frames) and at least as many tokens as target
units (a sample with too few gets CTC loss 0, not infinity).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def build_ctc_head(encoder_width: int, vocab_size: int) -> nn.Linear:
    """The CTC head: encoder token states `[B, S, E]` → per-token logits over the decoder vocabulary `[B, S, V]`."""
    return nn.Linear(encoder_width, vocab_size)


def ctc_targets(labels: torch.Tensor, drop_ids: Iterable[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    CTC targets from seq2seq labels: each row without -100 and without the special tokens `drop_ids`.

    Args:
        labels (`torch.LongTensor` of shape `[B, T]`): the decoder labels (-100 where ignored).
        drop_ids: ids to remove (eos, pad, bos, decoder start; `None` entries are skipped).

    Returns:
        `(targets [B, T'], lengths [B])`: left-aligned kept ids (padded with 0 beyond each length) and their counts.
    """
    keep = labels != -100  # [B, T]
    for token_id in {i for i in drop_ids if i is not None}:
        keep &= labels != token_id
    lengths = keep.sum(-1)  # [B]
    # A stable sort on "dropped" moves the kept ids to the front of each row in their original order.
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices  # [B, T]
    targets = torch.gather(labels.masked_fill(~keep, 0), 1, order)  # [B, T]
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    return targets[:, :width], lengths


def ctc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    blank_id: int,
    drop_ids: Iterable[int | None],
    input_mask: torch.Tensor | None = None,
    normaliser: torch.Tensor | int | None = None,
) -> torch.Tensor:
    r"""
    The CTC loss of per-token logits against the labels' characters, summed over the batch and divided by `normaliser`.

    Args:
        logits (`torch.Tensor` of shape `[B, S, V]`): the CTC head's outputs.
        labels (`torch.LongTensor` of shape `[B, T]`): the decoder labels.
        blank_id (`int`): the blank's index in the vocabulary (never a target).
        drop_ids: special-token ids that are not characters (see [`ctc_targets`]).
        input_mask (`torch.Tensor` of shape `[B, S]`, *optional*): 1 for real encoder tokens; all real when omitted.
        normaliser (*optional*): the divisor (the attention loss's target-token count, so both losses are per token
            and gradient accumulation weighs them alike); the number of kept characters when omitted.
    """
    drop = [*drop_ids, blank_id]
    targets, target_lengths = ctc_targets(labels.to(logits.device), drop)
    batch, length = logits.shape[:2]
    if input_mask is not None:
        input_lengths = input_mask.to(logits.device).long().sum(-1)  # [B]
    else:
        input_lengths = torch.full((batch,), length, dtype=torch.long, device=logits.device)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [S, B, V], as F.ctc_loss takes it
    total = F.ctc_loss(
        log_probs, targets, input_lengths, target_lengths, blank=blank_id, reduction="sum", zero_infinity=True
    )
    if normaliser is None:
        normaliser = target_lengths.sum().clamp(min=1)
    return total / normaliser


def ctc_greedy_decode(logits: torch.Tensor, blank_id: int, input_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Best-path decoding of CTC logits `[B, S, V]`: argmax per token, repeats merged, blanks dropped."""
    best = logits.argmax(-1)  # [B, S]
    lengths = input_mask.long().sum(-1).tolist() if input_mask is not None else [best.shape[1]] * best.shape[0]
    decoded = []
    for row, length in zip(best.tolist(), lengths):
        ids, previous = [], None
        for token in row[:length]:
            if token != previous and token != blank_id:
                ids.append(token)
            previous = token
        decoded.append(ids)
    return decoded


def joint_ctc_loss(
    head: nn.Linear,
    config: Any,
    attention_loss: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    labels: torch.Tensor,
    count: torch.Tensor | int,
) -> torch.Tensor:
    """`(1 - w) * attention_loss + w * CTC` of `head` on the encoder's token states `[B, S, E]` (mask `[B, S]`)."""
    if head.out_features != config.decoder.vocab_size:
        raise ValueError(
            f"The CTC head predicts {head.out_features} ids but the decoder vocabulary now has "
            f"{config.decoder.vocab_size} (resized after the head was built); build the model with the final "
            "vocabulary size, then set ctc_weight."
        )
    blank = config.ctc_blank_token_id if config.ctc_blank_token_id is not None else config.pad_token_id
    if blank is None:
        raise ValueError("ctc_weight > 0 needs a blank: set `ctc_blank_token_id` or `pad_token_id`.")
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    special = [*eos, config.pad_token_id, config.bos_token_id, config.decoder_start_token_id]
    ctc = ctc_loss(head(states), labels, blank, special, mask, count)  # [B, S, V] logits
    weight = config.ctc_weight
    return (1 - weight) * attention_loss + weight * ctc.to(attention_loss.dtype)
