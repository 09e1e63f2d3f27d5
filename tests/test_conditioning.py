"""Injected and prefix conditioning across decoder families: forward, identity at init, generation, save/load, padding,
key/value caching, `auto`, parameter counts, gradient checkpointing, learning, `Seq2SeqTrainer` and `torch.compile`.

Everything is tiny and offline (random configs, temp dirs). Tests that only read a model share one per configuration
(`shared`, built once per module). A summary table (decoder x conditioning x check) is written once the module's tests
have run (conditioning_table.md in a pytest temp dir) and printed.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny import (
    BERT_NO_DROPOUT,
    BOS,
    DECODER_FAMILIES,
    EOS,
    PAD,
    VOCAB,
    bert_encoder_config,
    llama_config,
    open_gates,
    randomize,
    vit_config,
)
from tiny import decoder_config as decoder_config_of
from torch import nn

import splice
import splice.conditioning.injected
from splice.conditioning.injected import cross_attention_kwargs, cross_attention_layers, cross_attention_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

ENC_WIDTH = 24  # ViT / BERT encoder width, deliberately different from the decoders' 32
ENCODER = {"hidden_size": ENC_WIDTH}
# Re-drawn weights: matrices N(0, 0.3), embeddings as small as the vectors, N(0, 0.3 / 4).
RANDOM = {"std": 0.3, "embedding_std": 0.3 / 4}
DECODERS = list(DECODER_FAMILIES)
CONDITIONINGS = ("injected", "prefix")
MATRIX = [(name, cond) for name in DECODERS for cond in CONDITIONINGS]

# (decoder, conditioning) -> {check: result}; a check is recorded only once all its assertions held.
RESULTS: dict[tuple[str, str], dict[str, str]] = {}
R_TABLE: list[str] = []
INJECTED_ONLY_CHECKS = ("gate-0 identity", "k/v once per generate (greedy, beam)")


def case_label(conditioning: str, extra: dict) -> str:
    return conditioning + "".join(f", {key.removeprefix('cross_attention_')}={value}" for key, value in extra.items())


def record(name: str, conditioning: str, check: str, value: str = "pass") -> None:
    RESULTS.setdefault((name, conditioning), {})[check] = value


# -- builders -------------------------------------------------------------------------------------------------------


def build(
    name: str,
    conditioning: str,
    encoder_config: T.PreTrainedConfig | None = None,
    seed: int = 0,
    randomized: bool = True,
    **kwargs,
) -> splice.SpliceModel:
    """A SpliceModel of `encoder_config` (tiny ViT by default) and decoder `name`; randomized, gates at 0.5."""
    decoder_config = decoder_config_of(name)
    config = splice.SpliceConfig.from_encoder_decoder_configs(
        encoder_config or vit_config(**ENCODER), decoder_config, conditioning=conditioning, **kwargs
    )
    assert config.conditioning == conditioning
    torch.manual_seed(seed)
    model = splice.SpliceModel(config).eval()
    assert type(model.decoder).__name__ == DECODER_FAMILIES[name].causal_lm
    if randomized:
        randomize(model, seed, **RANDOM)
        if conditioning == "injected":
            assert open_gates(model) > 0
    return model


@pytest.fixture(scope="module")
def shared():
    """`shared(name, conditioning, **build_kwargs)`: `build(...)`, once per module for tests that only read the model
    (no training, no parameter edits; hooks removed and gradients cleared before they return)."""
    models: dict[tuple, splice.SpliceModel] = {}

    def get(name: str, conditioning: str, encoder: str = "vit", **extra) -> splice.SpliceModel:
        key = (name, conditioning, encoder, tuple(sorted(extra.items())))
        if key not in models:
            encoder_config = bert_encoder_config(**ENCODER, **BERT_NO_DROPOUT) if encoder == "bert" else None
            models[key] = build(name, conditioning, encoder_config=encoder_config, **extra)
        return models[key]

    return get


def pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 30, 30, generator=torch.Generator().manual_seed(seed))


def target_ids(batch: int = 2, length: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


matrix = pytest.mark.parametrize("name,conditioning", MATRIX, ids=[f"{n}-{c}" for n, c in MATRIX])
injected_only = pytest.mark.parametrize("name", DECODERS)


# -- 1. forward and loss --------------------------------------------------------------------------------------------


@matrix
def test_forward_and_loss_ignore_index(name, conditioning, shared):
    model = shared(name, conditioning)
    images = pixels()
    labels = target_ids(length=6)
    out = model(pixel_values=images, labels=labels)
    assert out.logits.shape == (2, 6, VOCAB)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    expected = F.cross_entropy(out.logits.reshape(-1, VOCAB), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected)

    # Ignored positions (-100) contribute nothing: the loss is the mean over the kept positions only.
    ignored = labels.clone()
    ignored[1, 3:] = -100
    out = model(pixel_values=images, labels=ignored)
    assert out.logits.shape == (2, 6, VOCAB) and torch.isfinite(out.logits).all()
    keep = ignored != -100
    log_probs = out.logits.log_softmax(-1)[keep]  # [N, V]
    manual = -log_probs.gather(1, ignored[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, manual)
    # ... which is not the loss over all positions.
    assert not torch.allclose(out.loss, expected)
    # Backward reaches the conditioning parameters (the injected blocks / the projector) and the encoder.
    model.zero_grad(set_to_none=True)
    out.loss.backward()
    conditioning_params = (
        [p for _, p in cross_attention_parameters(model)]
        if conditioning == "injected"
        else list(model.prefix_projector.parameters())
    )
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in conditioning_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)  # the model is shared with the module's other tests
    record(name, conditioning, "forward+loss")


# -- 2. gate-0 identity ---------------------------------------------------------------------------------------------


@injected_only
def test_gate_zero_injected_decoder_is_the_bare_decoder(name):
    decoder_config = decoder_config_of(name)
    encoder = T.AutoModel.from_config(vit_config(**ENCODER))
    torch.manual_seed(0)
    decoder = randomize(T.AutoModelForCausalLM.from_config(decoder_config), seed=3, **RANDOM).eval()
    bare = copy.deepcopy(decoder)
    config = splice.SpliceConfig.from_encoder_decoder_configs(encoder.config, decoder.config, conditioning="injected")
    model = splice.SpliceModel(config=config, encoder=encoder, decoder=decoder).eval()
    assert model.decoder is decoder and len(list(cross_attention_layers(model))) == 2
    ids = torch.cat([torch.full((2, 1), BOS), target_ids(length=6)], dim=1)
    with torch.no_grad():
        expected = bare(input_ids=ids).logits
        composed = model(pixel_values=pixels(), decoder_input_ids=ids).logits
        assert torch.equal(composed, expected)
        # The blocks do run: any non-zero gate changes the logits.
        open_gates(model, 1e-2)
        assert not torch.allclose(model(pixel_values=pixels(), decoder_input_ids=ids).logits, expected)
    record(name, "injected", "gate-0 identity")


# -- 3. cached generation == uncached, and the image matters ----------------------------------------------------------

GENERATE = dict(max_new_tokens=6, min_new_tokens=6)


@matrix
def test_cached_generation_matches_uncached_and_depends_on_image(name, conditioning, shared):
    model = shared(name, conditioning)
    images = pixels(2, seed=0)
    with torch.no_grad():
        cached = model.generate(images, **GENERATE)
        uncached = model.generate(images, use_cache=False, **GENERATE)
        assert cached.shape == (2, 7) and (cached[:, 0] == BOS).all()
        assert torch.equal(cached, uncached)
        # Meaningful: two different images give two different captions, and a different batch other captions again.
        assert not torch.equal(cached[0], cached[1])
        others = model.generate(pixels(2, seed=5), **GENERATE)
        assert not torch.equal(others, cached)
        # Greedy equals the argmax of a teacher-forced forward over the generated ids (EOS is barred by min_new_tokens).
        logits = model(pixel_values=images, decoder_input_ids=cached[:, :-1]).logits
        logits[..., EOS] = -math.inf
        assert torch.equal(logits.argmax(-1), cached[:, 1:])
    record(name, conditioning, "cache==no-cache, image-dependent")


# -- 4. beam search and sampling ------------------------------------------------------------------------------------


@matrix
def test_beam_search_and_sampling(name, conditioning, shared):
    model = shared(name, conditioning)
    images = pixels(2)
    with torch.no_grad():
        beams = model.generate(images, num_beams=3, max_new_tokens=6)
        assert beams.dim() == 2 and beams.shape[0] == 2 and 2 <= beams.shape[1] <= 7
        assert (beams[:, 0] == BOS).all() and ((beams >= 0) & (beams < VOCAB)).all()
        scored = model.generate(
            images,
            num_beams=3,
            num_return_sequences=3,
            max_new_tokens=6,
            output_scores=True,
            return_dict_in_generate=True,
        )
        assert scored.sequences.shape[0] == 6
        # The returned beams are sorted by score, and the best one is what plain beam search returns.
        scores = scored.sequences_scores.view(2, 3)
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        best = scored.sequences.view(2, 3, -1)[:, 0]
        assert torch.equal(best[:, : beams.shape[1]], beams)
        torch.manual_seed(0)
        sampled = model.generate(images, do_sample=True, top_k=5, max_new_tokens=6, min_new_tokens=6)
        assert sampled.shape == (2, 7) and (sampled[:, 0] == BOS).all()
        # top_k=5: every sampled token is among the 5 most likely ones of the teacher-forced logits (EOS barred).
        logits = model(pixel_values=images, decoder_input_ids=sampled[:, :-1]).logits
        logits[..., EOS] = -math.inf
        top5 = logits.topk(5, dim=-1).indices  # [B, 6, 5]
        assert (top5 == sampled[:, 1:, None]).any(-1).all()
    record(name, conditioning, "beam+sample")


# -- 5. save / load -------------------------------------------------------------------------------------------------


SAVE_CASES = [(name, cond, {}) for name, cond in MATRIX] + [
    ("llama", "prefix", {"prefix_length": 4, "prefix_reducer": "resampler"}),
    ("qwen3", "prefix", {"prefix_length": 3, "prefix_reducer": "pool", "prefix_projector": "linear"}),
    (
        "llama",
        "injected",
        {"cross_attention_every": 2, "cross_attention_reduce_factor": 2, "cross_attention_feed_forward": True},
    ),
]


@pytest.mark.parametrize(
    "name,conditioning,extra",
    SAVE_CASES,
    ids=[f"{n}-{c}" + "".join(f"-{k.split('_')[-1]}{v}" for k, v in e.items()) for n, c, e in SAVE_CASES],
)
def test_save_and_reload_identical(name, conditioning, extra, tmp_path, shared):
    model = shared(name, conditioning, **extra)
    images, ids = pixels(), torch.cat([torch.full((2, 1), BOS), target_ids(length=5)], dim=1)
    with torch.no_grad():
        before = model(pixel_values=images, decoder_input_ids=ids).logits
        generated = model.generate(images, **GENERATE)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["conditioning"] == conditioning
    reloaded = splice.SpliceModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.conditioning == model.config.conditioning == conditioning
    assert type(reloaded.decoder).__name__ == DECODER_FAMILIES[name].causal_lm
    with torch.no_grad():
        after = reloaded(pixel_values=images, decoder_input_ids=ids).logits
        assert torch.equal(after, before)
        assert torch.equal(reloaded.generate(images, **GENERATE), generated)
    for key, value in extra.items():
        assert getattr(reloaded.config, key) == value
    if conditioning == "injected":  # the opened gates survive the round trip (not reset to 0 on load)
        gates = [p.item() for n, p in cross_attention_parameters(reloaded) if n.endswith("_gate")]
        blocks = len(list(cross_attention_layers(reloaded)))
        assert blocks == (1 if extra else 2) and gates == [0.5] * blocks * (2 if extra else 1)
    record(name, case_label(conditioning, extra), "save/load")


# -- 6. padding invariance ------------------------------------------------------------------------------------------

SOURCES = [[5, 17, 23, 42, 8, 61, 9], [31, 4, 77], [12, 50, 6, 19, 88]]  # different lengths -> right padding


def padded_batch(sources: list[list[int]]) -> dict[str, torch.Tensor]:
    length = max(map(len, sources))
    input_ids = torch.full((len(sources), length), PAD)
    attention_mask = torch.zeros(len(sources), length, dtype=torch.long)
    for row, source in enumerate(sources):
        input_ids[row, : len(source)] = torch.tensor(source)
        attention_mask[row, : len(source)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


PADDING_CASES = [(name, cond, {}) for name, cond in MATRIX] + [
    ("llama", "prefix", {"prefix_length": 4, "prefix_reducer": "resampler"}),
    ("llama", "prefix", {"prefix_length": 4, "prefix_reducer": "pool"}),
    ("gpt2", "prefix", {"prefix_length": 4, "prefix_reducer": "pool", "prefix_projector": "linear"}),
]


@pytest.mark.parametrize(
    "name,conditioning,extra",
    PADDING_CASES,
    ids=[f"{n}-{c}" + "".join(f"-{v}" for v in e.values()) for n, c, e in PADDING_CASES],
)
def test_padded_batch_generates_like_each_sample_alone(name, conditioning, extra, shared):
    # Sliding-window families keep their window of 4: the prefix's padding is left-aligned, so a padded sample sees the
    # same tokens in its window as alone.
    model = shared(name, conditioning, encoder="bert", **extra)
    batch = padded_batch(SOURCES)
    assert (batch["attention_mask"] == 0).any()
    settings = dict(max_new_tokens=5, min_new_tokens=5)
    if conditioning == "prefix" and not extra:  # one prefix token per encoder state, the padded ones masked
        states = torch.zeros(3, batch["input_ids"].shape[1], ENC_WIDTH)
        left_aligned = torch.sort(batch["attention_mask"], dim=1, stable=True).values
        assert torch.equal(model.prefix_projector.prefix_mask(states, batch["attention_mask"]), left_aligned)
    with torch.no_grad():
        together = model.generate(**batch, **settings)
        alone = torch.cat([model.generate(**padded_batch([source]), **settings) for source in SOURCES])
        assert together.shape == (3, 6)
        assert torch.equal(together, alone)
        # The source matters (otherwise the invariance would be trivial) ...
        assert len({tuple(row.tolist()) for row in together}) > 1
        # ... and so does the mask: attending to the padding changes some sample's output.
        unmasked = model(
            input_ids=batch["input_ids"],
            decoder_input_ids=together[:, :-1],
            attention_mask=torch.ones_like(batch["input_ids"]),
        ).logits
        masked = model(**batch, decoder_input_ids=together[:, :-1]).logits
        assert not torch.allclose(unmasked[1:], masked[1:])
    record(name, case_label(conditioning, extra), "padding invariance", "pass")


# -- 7. keys / values of the encoder states are projected once per generate ------------------------------------------


@injected_only
def test_key_value_projection_runs_once_per_generate(name, shared):
    model = shared(name, "injected")
    blocks = [layer.cross_attention for _, layer in cross_attention_layers(model)]
    assert len(blocks) == 2
    calls: dict[str, list[int]] = {proj: [0] * len(blocks) for proj in ("q_proj", "k_proj", "v_proj")}
    handles = []
    for index, block in enumerate(blocks):
        for proj, counts in calls.items():

            def hook(module, args, output, counts=counts, index=index):
                counts[index] += 1

            handles.append(getattr(block, proj).register_forward_hook(hook))
    try:
        for settings in ({}, {"num_beams": 3}):
            for counts in calls.values():
                counts[:] = [0] * len(blocks)
            with torch.no_grad():
                out = model.generate(pixels(2), max_new_tokens=6, min_new_tokens=6, **settings)
            assert out.shape == (2, 7)
            assert calls["k_proj"] == [1, 1] and calls["v_proj"] == [1, 1], (settings, calls)
            # ... while every one of the 6 decoding steps did run the blocks (queries are projected per step).
            assert calls["q_proj"] == [6, 6], (settings, calls)
    finally:
        for handle in handles:
            handle.remove()
    record(name, "injected", "k/v once per generate (greedy, beam)")


# -- 8. conditioning="auto" -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [("gpt2", "native"), ("llama", "injected")])
def test_auto_resolves_and_is_saved(name, expected, tmp_path):
    config = splice.SpliceConfig.from_encoder_decoder_configs(
        vit_config(**ENCODER), decoder_config_of(name)
    )  # conditioning="auto"
    assert config.conditioning == expected
    model = splice.SpliceModel(config).eval()
    injected = list(cross_attention_layers(model))
    if expected == "native":
        assert not injected and model.decoder.config.add_cross_attention
        assert any("crossattention" in n for n, _ in model.decoder.named_modules())
        assert hasattr(model, "enc_to_dec_proj")  # ViT width 24 -> GPT-2 width 32
    else:
        assert len(injected) == 2 and not getattr(model.decoder.config, "add_cross_attention", False)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["conditioning"] == expected
    reloaded = splice.SpliceModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.conditioning == expected
    with torch.no_grad():
        ids = torch.tensor([[BOS, 5, 6, 7]] * 2)
        assert torch.equal(
            reloaded(pixel_values=pixels(), decoder_input_ids=ids).logits,
            model(pixel_values=pixels(), decoder_input_ids=ids).logits,
        )
    record(name, "auto", f"resolves to {expected} + saved")


# -- 9. parameter count of the injected cross-attention --------------------------------------------------------------


def expected_cross_attention_params(hidden: int, enc: int, r: int, feed_forward: bool) -> int:
    """One GatedCrossAttention: LayerNorm, q D->D/r, k/v E->D/r, o D/r->D (all with bias), the gate [, gated FFN]."""
    inner = hidden // r
    count = 2 * hidden  # norm (weight + bias)
    count += hidden * inner + inner  # q_proj
    count += 2 * (enc * inner + inner)  # k_proj, v_proj
    count += inner * hidden + hidden  # o_proj
    count += 1  # attn_gate
    if feed_forward:  # LayerNorm, D -> 4D -> D, ffn_gate
        count += 2 * hidden + (hidden * 4 * hidden + 4 * hidden) + (4 * hidden * hidden + hidden) + 1
    return count


def test_cross_attention_parameter_count_by_reduce_factor():
    hidden, enc, layers = 128, 64, 2
    decoder_config = llama_config(hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers)
    encoder_params = sum(p.numel() for p in T.AutoModel.from_config(vit_config(hidden_size=enc)).parameters())
    decoder_params = sum(p.numel() for p in T.AutoModelForCausalLM.from_config(decoder_config).parameters())
    rows = ["| r | feed_forward | every | inner width | params / block | blocks | injected params |", "|" + "---|" * 7]
    for r, feed_forward, every in [(1, False, 1), (2, False, 1), (4, False, 1), (8, False, 1), (16, False, 1),
                                   (4, True, 1), (4, False, 2)]:  # fmt: skip
        config = splice.SpliceConfig.from_encoder_decoder_configs(
            vit_config(hidden_size=enc),
            copy.deepcopy(decoder_config),
            conditioning="injected",
            cross_attention_reduce_factor=r,
            cross_attention_feed_forward=feed_forward,
            cross_attention_every=every,
        )
        model = splice.SpliceModel(config)
        blocks = [layer.cross_attention for _, layer in cross_attention_layers(model)]
        assert len(blocks) == layers // every
        assert all(b.q_proj.out_features == hidden // r and b.head_dim == hidden // r // 4 for b in blocks)
        per_block = expected_cross_attention_params(hidden, enc, r, feed_forward)
        expected = per_block * len(blocks)
        total = sum(p.numel() for p in model.parameters())
        assert total - encoder_params - decoder_params == expected  # what splice adds, counted from outside
        # Freezing the encoder and the decoder's own weights leaves exactly the injected blocks trainable.
        model.requires_grad_(False)
        for block in blocks:
            block.requires_grad_(True)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
        assert sum(p.numel() for _, p in cross_attention_parameters(model)) == expected
        rows.append(
            f"| {r} | {feed_forward} | {every} | {hidden // r} | {per_block:,} | {len(blocks)} | {expected:,} |"
        )
    R_TABLE[:] = [f"Llama decoder D={hidden}, {layers} layers, 4 heads; ViT encoder E={enc}", "", *rows]
    print("\n" + "\n".join(R_TABLE))
    record("llama", "injected", "param count by r")


# -- 10. gradient checkpointing ---------------------------------------------------------------------------------------


def test_gradient_checkpointing_injected_llama_same_gradients():
    model = build("llama", "injected")
    model.train()
    images, labels = pixels(), target_ids(length=6)
    # Count real calls by wrapping `forward` (module hooks do not fire during the non-reentrant recomputation): a
    # submodule of each decoder layer (recomputed in backward when checkpointed) and each injected block.
    mlp_calls, cross_calls = [0], [0]

    def count_calls(module: nn.Module, counter: list[int]) -> None:
        forward = module.forward

        def counting_forward(*args, **kwargs):
            counter[0] += 1
            return forward(*args, **kwargs)

        module.forward = counting_forward

    for _, layer in cross_attention_layers(model):
        count_calls(layer.base_layer.mlp, mlp_calls)
        count_calls(layer.cross_attention, cross_calls)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        mlp_calls[0] = cross_calls[0] = 0
        loss = model(pixel_values=images, labels=labels).loss
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert (mlp_calls[0], cross_calls[0]) == (2, 2)  # one forward per decoder layer
    model.activation_checkpointing_enable()  # transformers v5 name of `gradient_checkpointing_enable`
    assert model.decoder.model.gradient_checkpointing
    checkpointed = grads()
    assert mlp_calls[0] == 4  # each checkpointed decoder layer ran again during backward: checkpointing is on
    assert cross_calls[0] == 2  # the injected blocks sit outside the host's checkpoints (by design)
    assert plain.keys() == checkpointed.keys()
    injected = {n for n, _ in cross_attention_parameters(model)}
    assert injected <= plain.keys() and all(plain[n].abs().sum() > 0 for n in injected)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    record("llama", "injected", "gradient checkpointing")


# -- 11. it learns ----------------------------------------------------------------------------------------------------

CAPTIONS = [[3, 8, 4], [6, 11, 7, 3], [9, 6, 3, 9, 6], [3, 9, 6], [6, 4, 11, 9], [9, 7, 5, 3, 10], [3, 11, 10],
            [6, 5, 4, 3]]  # fmt: skip


def test_injected_llama_overfits_eight_captions():
    from transformers.modeling_outputs import BaseModelOutput

    model = build("llama", "injected", randomized=False)  # default init, gates at 0: it has to open them
    images = torch.rand(8, 3, 30, 30, generator=torch.Generator().manual_seed(7))  # 8 distinct random patterns
    labels = torch.full((8, 6), -100)
    for row, caption in enumerate(CAPTIONS):
        labels[row, : len(caption) + 1] = torch.tensor([*caption, EOS])
    expected = torch.full((8, 7), PAD)  # start token, caption, EOS, then padding
    expected[:, 0] = BOS
    expected[:, 1:] = labels.masked_fill(labels == -100, PAD)

    with torch.no_grad():
        before = model.generate(images, max_new_tokens=6)
    assert not torch.equal(before, expected)

    # Frozen encoder (its states computed once), trained decoder + injected cross-attention.
    model.encoder.requires_grad_(False)
    with torch.no_grad():
        encoder_outputs = BaseModelOutput(last_hidden_state=model.encoder(pixel_values=images).last_hidden_state)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    keep = labels != -100
    steps = 0
    while steps < 200:
        steps += 1
        out = model(encoder_outputs=encoder_outputs, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if out.loss.item() < 0.1 and bool((out.logits.argmax(-1)[keep] == labels[keep]).all()):
            break
    model.eval()
    gates = [p.item() for n, p in cross_attention_parameters(model) if n.endswith("attn_gate")]
    assert any(abs(g) > 1e-3 for g in gates)  # the cross-attention was opened by training
    with torch.no_grad():
        generated = model.generate(images, max_new_tokens=6)
    assert generated.tolist() == expected.tolist(), f"after {steps} steps"
    record("llama", "injected", "overfits 8 captions", f"pass ({steps} steps)")


# -- 12. Seq2SeqTrainer -----------------------------------------------------------------------------------------------


def test_seq2seq_trainer_trains_and_predicts_with_generate(tmp_path):
    model = build("llama", "injected")
    gen = torch.Generator().manual_seed(11)
    dataset = [
        {
            "pixel_values": torch.randn(3, 30, 30, generator=gen),
            "labels": torch.randint(3, VOCAB, (2 + i % 3,), generator=gen),
        }
        for i in range(6)
    ]

    def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(e["labels"]) for e in examples)
        labels = torch.full((len(examples), length), -100)
        for row, example in enumerate(examples):
            labels[row, : len(example["labels"])] = example["labels"]
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "labels": labels}

    args = T.Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        predict_with_generate=True,
        generation_max_length=8,
        remove_unused_columns=False,
    )
    trainer = T.Seq2SeqTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    before = {n: p.detach().clone() for n, p in cross_attention_parameters(model)}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert trainer.state.global_step == 3
    assert any(not torch.equal(p, before[n]) for n, p in cross_attention_parameters(model))  # it did train

    prediction = trainer.predict(dataset)
    predictions = torch.as_tensor(prediction.predictions)
    assert predictions.shape[0] == 6
    model.eval()
    with torch.no_grad():
        reference = model.generate(torch.stack([e["pixel_values"] for e in dataset]), max_length=8)
    assert reference.shape[1] == 8  # generation_max_length is the limit (no EOS within 7 steps here)
    # Seq2SeqTrainer pads generations to `generation_config.max_length` (20 by default; transformers' behaviour) with
    # pad, and concatenates batches with -100: beyond the generated 8 ids there is only padding.
    assert torch.equal(predictions[:, :8], reference)
    assert set(predictions[:, 8:].unique().tolist()) <= {PAD, -100}
    record("llama", "injected", "Seq2SeqTrainer train + predict")


# -- 13. torch.compile -------------------------------------------------------------------------------------------------


def test_torch_compile_injected_decoder_matches_eager(shared):
    model = shared("llama", "injected")
    ids = torch.cat([torch.full((2, 1), BOS), target_ids(length=6)], dim=1)
    compiled = torch.compile(model.decoder)
    with torch.no_grad():
        for seed in (0, 5):  # a second set of encoder states must not be baked into the compiled graph
            states = model.encoder(pixel_values=pixels(seed=seed)).last_hidden_state
            # The encoder side travels with each call: nothing projected by one run is reused by the other.
            compiled_logits = compiled(input_ids=ids, **cross_attention_kwargs(states)).logits
            eager_logits = model.decoder(input_ids=ids, **cross_attention_kwargs(states)).logits
            torch.testing.assert_close(compiled_logits, eager_logits, atol=1e-5, rtol=1e-5)
            through_model = model(pixel_values=pixels(seed=seed), decoder_input_ids=ids).logits
            assert torch.equal(eager_logits, through_model)
            if seed == 0:
                first = compiled_logits
        assert not torch.allclose(compiled_logits, first)
        # The whole composite compiles as one graph, and matches eager.
        full = torch.compile(model, fullgraph=True)
        fullgraph_logits = full(pixel_values=pixels(seed=5), decoder_input_ids=ids).logits
        torch.testing.assert_close(fullgraph_logits, eager_logits, atol=1e-5, rtol=1e-5)
    record("llama", "injected", "torch.compile == eager")


# -- summary ----------------------------------------------------------------------------------------------------------


MATRIX_CHECKS = [
    "forward+loss",
    "gate-0 identity",
    "cache==no-cache, image-dependent",
    "beam+sample",
    "save/load",
    "padding invariance",
    "k/v once per generate (greedy, beam)",
]


def summary_table(results: dict[tuple[str, str], dict[str, str]], r_table: list[str]) -> str:
    """The matrix (decoder x conditioning x check: what passed, empty where a check did not pass or was not run, n/a
    where it does not apply), the other checks, and the parameter-count table."""
    lines = ["| decoder | conditioning | " + " | ".join(MATRIX_CHECKS) + " |", "|" + "---|" * (len(MATRIX_CHECKS) + 2)]
    for name, conditioning in MATRIX:
        row = results.get((name, conditioning), {})
        cells = [
            row.get(c, "n/a" if c in INJECTED_ONLY_CHECKS and conditioning != "injected" else "") for c in MATRIX_CHECKS
        ]
        lines.append(f"| {name} | {conditioning} | " + " | ".join(cells) + " |")
    other = ["| decoder | conditioning | check | result |", "|---|---|---|---|"]
    for (name, conditioning), row in results.items():
        for check, value in row.items():
            if (name, conditioning) not in MATRIX or check not in MATRIX_CHECKS:
                other.append(f"| {name} | {conditioning} | {check} | {value} |")
    sections = ["# splice conditioning matrix", "", *lines, "", "## other checks", "", *other, ""]
    return "\n".join([*sections, "## injected cross-attention parameters", "", *r_table])


@pytest.fixture(scope="module", autouse=True)
def write_summary_table(tmp_path_factory):
    """After the module's tests (whichever ran, in any order): write and print what passed."""
    yield
    text = summary_table(RESULTS, R_TABLE)
    (tmp_path_factory.mktemp("conditioning") / "conditioning_table.md").write_text(text + "\n")
    print("\n" + text)


def test_summary_table_marks_every_check():
    """The table has one row per matrix case; a recorded check reads as recorded, a missing one stays empty, an
    injected-only check is n/a for prefix, and checks outside the matrix are listed below it."""
    first, second = MATRIX[0], MATRIX[1]
    assert first[1] == "injected" and second == (first[0], "prefix")
    results = {first: {check: "pass" for check in MATRIX_CHECKS}, second: {"forward+loss": "pass"},
               ("llama", "auto"): {"resolves to injected + saved": "pass"}}  # fmt: skip
    text = summary_table(results, ["r table"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| decoder")]
    matrix_rows = rows[: len(MATRIX)]
    assert [tuple(r.split(" | ")[:2]) for r in matrix_rows] == [(f"| {n}", c) for n, c in MATRIX]
    assert matrix_rows[0] == f"| {first[0]} | injected | " + " | ".join(["pass"] * len(MATRIX_CHECKS)) + " |"
    cells = matrix_rows[1].split(" | ")[2:]
    expected = ["pass", "n/a", "", "", "", "", "n/a"]
    assert [c.removesuffix(" |").strip() for c in cells] == expected
    assert "| llama | auto | resolves to injected + saved | pass |" in rows
    assert text.endswith("r table")


def test_gates_missing_from_a_checkpoint_load_as_identity(tmp_path):
    from safetensors.torch import load_file, save_file

    vit = vit_config(hidden_size=ENC_WIDTH, num_hidden_layers=1)
    llama = llama_config(pad_token_id=None)
    model = splice.SpliceModel(splice.SpliceConfig.from_encoder_decoder_configs(vit, llama, conditioning="injected"))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".cross_attention." not in k}, tmp_path / "model.safetensors")
    reloaded = splice.SpliceModel.from_pretrained(tmp_path)
    gates = [p.item() for n, p in cross_attention_parameters(reloaded) if n.endswith("gate")]
    assert gates == [0.0, 0.0]
