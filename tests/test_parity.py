"""Oracle matrix: splice's VisionEncoderDecoderModel / EncoderDecoderModel against transformers' own classes.

Every vision encoder {ViT, DeiT, BEiT, Swin, DonutSwin} x decoder {GPT-2, BERT, RoBERTa, TrOCR, BART, ELECTRA}, and
every text encoder {BERT, RoBERTa} x the same decoders. Each pair is built once in transformers (tiny config, weights
re-drawn so generation is not degenerate), saved, and loaded into splice; the tests then compare logits, loss,
greedy and beam generation, checkpoints in both directions and the Auto-class mapping. Swin (width 24) and the RoBERTa
encoder (width 24) differ from the decoders' width 32, so `enc_to_dec_proj` is covered as well.
"""

import functools
import os
import warnings
from types import SimpleNamespace

import pytest
import torch
import transformers
from tiny import (
    DECODER_START,
    DECODERS,
    PAD,
    TEXT_ENCODERS,
    VISION_ENCODERS,
    labels,
    mkldnn_enabled,
    pixel_values,
    randomize,
    text_inputs,
)
from transformers.utils import logging as hf_logging

import splice

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

LOGIT_ATOL = 1e-5
LOSS_ATOL = 1e-6
MAX_NEW_TOKENS = 8

# Largest |splice - transformers| logit difference seen by any check, one entry per (pair, check).
MAX_LOGIT_DIFFS: list[tuple[str, str, float]] = []

PAIRS = [("vision", enc, dec) for enc in VISION_ENCODERS for dec in DECODERS] + [
    ("text", enc, dec) for enc in TEXT_ENCODERS for dec in DECODERS
]
PAIR_IDS = [f"{'ved' if kind == 'vision' else 'ed'}-{enc}-{dec}" for kind, enc, dec in PAIRS]

pytestmark = pytest.mark.usefixtures("one_thread")


def _classes(kind):
    if kind == "vision":
        return (
            transformers.VisionEncoderDecoderConfig,
            transformers.VisionEncoderDecoderModel,
            splice.VisionEncoderDecoderConfig,
            splice.VisionEncoderDecoderModel,
            transformers.AutoModelForImageTextToText,
        )
    return (
        transformers.EncoderDecoderConfig,
        transformers.EncoderDecoderModel,
        splice.EncoderDecoderConfig,
        splice.EncoderDecoderModel,
        transformers.AutoModelForSeq2SeqLM,
    )


@pytest.fixture(scope="module")
def pair_of(tmp_path_factory):
    """`pair_of(kind, enc, dec)`: the pair built by `_pair` under this module's temp dir, once per pair."""
    root = tmp_path_factory.mktemp("parity")
    return functools.cache(lambda kind, enc, dec: _pair(kind, enc, dec, str(root / f"{kind}-{enc}-{dec}")))


def _pair(kind: str, enc: str, dec: str, directory: str) -> SimpleNamespace:
    """Build the transformers composite for a pair, save it in `directory`, and load it into splice."""
    hf_config_cls, hf_model_cls, sp_config_cls, sp_model_cls, auto_cls = _classes(kind)
    encoders = VISION_ENCODERS if kind == "vision" else TEXT_ENCODERS
    index = PAIRS.index((kind, enc, dec))
    torch.manual_seed(index)

    config = hf_config_cls.from_encoder_decoder_configs(encoders[enc](), DECODERS[dec]())
    oracle = hf_model_cls(config)
    randomize(oracle, seed=index)
    for cfg in (oracle.config, oracle.generation_config):
        cfg.decoder_start_token_id = DECODER_START
        cfg.pad_token_id = PAD
    oracle.eval()
    oracle.save_pretrained(os.path.join(directory, "oracle"))

    model, info = sp_model_cls.from_pretrained(os.path.join(directory, "oracle"), output_loading_info=True)
    model.eval()
    if kind == "vision":
        inputs = {"pixel_values": pixel_values(oracle.config.encoder, seed=index)}
    else:
        inputs = text_inputs(seed=index)
    return SimpleNamespace(
        kind=kind,
        name=f"{kind}-{enc}-{dec}",
        dec=dec,
        oracle=oracle,
        model=model,
        loading_info=info,
        inputs=inputs,
        directory=directory,
        classes=(hf_config_cls, hf_model_cls, sp_config_cls, sp_model_cls, auto_cls),
        seed=index,
    )


def _record(pair, check: str, diff: float) -> None:
    MAX_LOGIT_DIFFS.append((pair.name, check, diff))
    print(f"[{pair.name}] {check}: max |logit diff| = {diff:.3g}")


def _finite_max(scores: torch.Tensor) -> float:
    finite = scores[torch.isfinite(scores)]
    return finite.abs().max().item() if finite.numel() else 0.0


def _finite_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| over finite entries, after checking both have the same -inf/inf entries (logits processors, e.g.
    BART's forced eos, mask scores to -inf)."""
    assert torch.equal(torch.isfinite(a), torch.isfinite(b))
    assert torch.equal(a[~torch.isfinite(a)], b[~torch.isfinite(b)])
    finite = torch.isfinite(a)
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def _forward(model, inputs, **kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' EncoderDecoderModel warns about its loss on every call
        return model(**inputs, **kwargs)


def _generate(model, inputs, **kwargs):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, **kwargs)


@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_loads_transformers_checkpoint(kind, enc, dec, pair_of):
    pair = pair_of(kind, enc, dec)
    _, _, sp_config_cls, sp_model_cls, _ = pair.classes
    assert type(pair.model) is sp_model_cls
    assert isinstance(pair.model, splice.SpliceModel)
    assert type(pair.model.config) is sp_config_cls
    info = pair.loading_info
    assert not info["missing_keys"], info["missing_keys"]
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info["mismatched_keys"], info["mismatched_keys"]
    assert set(pair.model.state_dict()) == set(pair.oracle.state_dict())
    oracle_state = pair.oracle.state_dict()
    for key, value in pair.model.state_dict().items():
        assert torch.equal(value, oracle_state[key]), key
    # The width mismatch (Swin / RoBERTa encoder 24 vs decoder 32) is bridged the same way on both sides.
    assert hasattr(pair.model, "enc_to_dec_proj") == hasattr(pair.oracle, "enc_to_dec_proj")


@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_forward_logits_and_loss(kind, enc, dec, pair_of):
    pair = pair_of(kind, enc, dec)
    target = labels(seed=pair.seed)  # no -100: both sides see the same (all-ones) decoder mask
    expected = _forward(pair.oracle, pair.inputs, labels=target)
    got = _forward(pair.model, pair.inputs, labels=target)
    assert got.logits.shape == expected.logits.shape == (*target.shape, pair.model.config.decoder.vocab_size)
    diff = (got.logits - expected.logits).abs().max().item()
    _record(pair, "forward", diff)
    assert diff <= LOGIT_ATOL
    assert torch.isfinite(got.loss)
    assert abs(got.loss.item() - expected.loss.item()) <= LOSS_ATOL
    torch.testing.assert_close(got.encoder_last_hidden_state, expected.encoder_last_hidden_state, atol=0, rtol=0)

    # Explicit decoder_input_ids (no labels) take the same path on both sides.
    decoder_input_ids = torch.cat([torch.full_like(target[:, :1], DECODER_START), target[:, :-1]], dim=1)
    expected = _forward(pair.oracle, pair.inputs, decoder_input_ids=decoder_input_ids)
    got = _forward(pair.model, pair.inputs, decoder_input_ids=decoder_input_ids)
    diff = (got.logits - expected.logits).abs().max().item()
    _record(pair, "forward-decoder_input_ids", diff)
    assert diff <= LOGIT_ATOL


@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_ignore_index_labels(kind, enc, dec, pair_of):
    # splice masks decoder positions whose previous label is -100; transformers' VED passes no decoder mask and its
    # EncoderDecoderModel masks pad ids. Positions whose label is real see only real inputs (causal), so there the
    # logits, and hence the loss, must agree.
    pair = pair_of(kind, enc, dec)
    target = labels(seed=pair.seed, pad_with_ignore=True)
    assert (target == -100).any()
    expected = _forward(pair.oracle, pair.inputs, labels=target)
    got = _forward(pair.model, pair.inputs, labels=target)
    keep = target != -100
    diff = (got.logits[keep] - expected.logits[keep]).abs().max().item()
    _record(pair, "forward-ignore-index", diff)
    assert diff <= LOGIT_ATOL
    assert abs(got.loss.item() - expected.loss.item()) <= LOSS_ATOL


@pytest.mark.parametrize("onednn", [False, True], ids=["exact", "onednn"])
@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_generate_greedy_and_beam(kind, enc, dec, onednn, pair_of):
    # With oneDNN switched off splice's generate runs the oracle's arithmetic, and scores must agree to LOGIT_ATOL. With
    # it on (the default), splice's linears sum in another order (splice/onednn.py): ids must still be identical, and
    # scores agree to the same tolerance relative to their magnitude (fp32 rounding grows with the logits' scale).
    pair = pair_of(kind, enc, dec)
    # Scores are compared as well as ids: random decoders often settle on repeating a token, and equal ids alone
    # would then say little; the per-step scores (cached decoding, the path training never takes) must agree too.
    scored = {"output_scores": True, "return_dict_in_generate": True}
    with mkldnn_enabled(onednn):
        expected = _generate(pair.oracle, pair.inputs, **scored)
        got = _generate(pair.model, pair.inputs, **scored)
    print(f"[{pair.name}] greedy: {got.sequences.tolist()}")
    assert torch.equal(got.sequences, expected.sequences), (got.sequences.tolist(), expected.sequences.tolist())
    assert (got.sequences[:, 0] == DECODER_START).all()
    assert len(got.scores) == len(expected.scores)
    diff = max(_finite_diff(a, b) for a, b in zip(got.scores, expected.scores))
    scale = max(_finite_max(s) for s in expected.scores) if onednn else 1.0
    _record(pair, f"greedy-scores{'-onednn' if onednn else ''}", diff)
    assert diff <= LOGIT_ATOL * max(1.0, scale)
    if dec == "gpt2":
        # The re-drawn weights make GPT-2 decoding non-degenerate, so equal ids mean something: the output is not one
        # repeated token, and it depends on the input (the two rows differ).
        ids = got.sequences
        assert len(set(ids[:, 1:].flatten().tolist())) > 2, ids.tolist()
        assert not torch.equal(ids[0], ids[1]), ids.tolist()

    with mkldnn_enabled(onednn):
        expected = _generate(pair.oracle, pair.inputs, num_beams=3, **scored)
        got = _generate(pair.model, pair.inputs, num_beams=3, **scored)
    assert torch.equal(got.sequences, expected.sequences), (got.sequences.tolist(), expected.sequences.tolist())
    tolerance = 1e-5 * (max(1.0, expected.sequences_scores.abs().max().item()) if onednn else 1.0)
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, atol=tolerance, rtol=0)


@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_save_reverse_and_round_trip(kind, enc, dec, pair_of):
    pair = pair_of(kind, enc, dec)
    _, hf_model_cls, _, sp_model_cls, _ = pair.classes
    out = os.path.join(pair.directory, "splice")
    pair.model.save_pretrained(out)
    target = labels(seed=pair.seed)
    reference = _forward(pair.model, pair.inputs, labels=target)

    # splice checkpoint -> transformers: nothing missing or left over, same logits, same greedy ids.
    reverse, info = hf_model_cls.from_pretrained(out, output_loading_info=True)
    reverse.eval()
    assert type(reverse) is hf_model_cls
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    got = _forward(reverse, pair.inputs, labels=target)
    diff = (got.logits - reference.logits).abs().max().item()
    _record(pair, "splice->transformers", diff)
    assert diff <= LOGIT_ATOL
    assert torch.equal(_generate(reverse, pair.inputs), _generate(pair.model, pair.inputs))

    # splice checkpoint -> splice: identical weights and logits.
    again = sp_model_cls.from_pretrained(out).eval()
    assert type(again) is sp_model_cls
    got = _forward(again, pair.inputs, labels=target)
    assert torch.equal(got.logits, reference.logits)
    assert got.loss.item() == reference.loss.item()
    reference_state = pair.model.state_dict()
    assert set(again.state_dict()) == set(reference_state)
    for name, value in again.state_dict().items():
        assert torch.equal(value, reference_state[name]), name


@pytest.mark.parametrize(("kind", "enc", "dec"), PAIRS, ids=PAIR_IDS)
def test_auto_class_builds_splice(kind, enc, dec, pair_of):
    pair = pair_of(kind, enc, dec)
    _, _, sp_config_cls, sp_model_cls, auto_cls = pair.classes
    model = auto_cls.from_pretrained(os.path.join(pair.directory, "oracle")).eval()
    assert type(model) is sp_model_cls
    assert type(model.config) is sp_config_cls
    assert type(transformers.AutoConfig.from_pretrained(os.path.join(pair.directory, "oracle"))) is sp_config_cls
    target = labels(seed=pair.seed)
    got = _forward(model, pair.inputs, labels=target).logits
    diff = (got - _forward(pair.oracle, pair.inputs, labels=target).logits).abs().max().item()
    _record(pair, "auto-class", diff)
    assert diff <= LOGIT_ATOL


@pytest.mark.parametrize(("enc", "dec"), [(e, d) for e in TEXT_ENCODERS for d in DECODERS])
def test_encoder_mask_reaches_cross_attention(enc, dec, pair_of):
    # Same encoder states, only the mask changes: any logit change comes from the cross-attention mask alone.
    pair = pair_of("text", enc, dec)
    target = labels(seed=pair.seed)
    with torch.no_grad():
        states = pair.model.get_encoder()(**pair.inputs).last_hidden_state
    masked = {"encoder_outputs": (states,), "attention_mask": pair.inputs["attention_mask"]}
    unmasked = {"encoder_outputs": (states,)}
    got = _forward(pair.model, masked, labels=target).logits
    expected = _forward(pair.oracle, masked, labels=target).logits
    diff = (got - expected).abs().max().item()
    _record(pair, "encoder-mask", diff)
    assert diff <= LOGIT_ATOL
    padded_row = 1  # text_inputs pads every row after the first
    assert pair.inputs["attention_mask"][padded_row].min() == 0
    ignored = _forward(pair.model, unmasked, labels=target).logits
    assert (ignored[padded_row] - got[padded_row]).abs().max() > 1e-4, "the encoder mask had no effect"
    torch.testing.assert_close(ignored[0], got[0], atol=1e-6, rtol=0)  # the unpadded row is untouched


def test_report_max_logit_diff(pair_of):
    """The largest |splice - transformers| logit difference over this session's comparisons, within LOGIT_ATOL.

    Independent of the other tests: a pair that no other test compared (this test run alone, or a `-k` selection)
    gets its forward comparison here, so the report always covers every pair."""
    compared = {name for name, _, _ in MAX_LOGIT_DIFFS}
    for kind, enc, dec in PAIRS:
        pair = pair_of(kind, enc, dec)
        if pair.name not in compared:
            target = labels(seed=pair.seed)
            ids = torch.cat([torch.full_like(target[:, :1], DECODER_START), target[:, :-1]], dim=1)
            got = _forward(pair.model, pair.inputs, decoder_input_ids=ids).logits
            expected = _forward(pair.oracle, pair.inputs, decoder_input_ids=ids).logits
            _record(pair, "report-forward", (got - expected).abs().max().item())
    assert {name for name, _, _ in MAX_LOGIT_DIFFS} >= {f"{kind}-{enc}-{dec}" for kind, enc, dec in PAIRS}
    name, check, diff = max(MAX_LOGIT_DIFFS, key=lambda item: item[2])
    print(f"max |logit diff| over {len(MAX_LOGIT_DIFFS)} comparisons: {diff:.3g} ({name}, {check})")
    assert diff <= LOGIT_ATOL
