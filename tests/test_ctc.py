"""Joint CTC–attention training (`ctc_weight`): off changes nothing; on, it trains, saves and loads with the model."""

import pytest
import torch
from tiny import cli_decoder, cli_encoder
from transformers import AutoConfig

import splice
from splice.models.ctc import ctc_greedy_decode, ctc_loss, ctc_targets

PAD, BOS, EOS, VOCAB = 0, 1, 2, 40


def _config(**composite):
    # Column patches: 16 tokens ordered left to right, as CTC needs.
    encoder = AutoConfig.for_model(
        "vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        image_size=[16, 64], patch_size=[16, 4],
    )  # fmt: skip
    decoder = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=4, n_positions=32, vocab_size=VOCAB)
    return splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        encoder, decoder, decoder_start_token_id=BOS, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
        **composite,
    )  # fmt: skip


def _model(seed=0, **composite):
    torch.manual_seed(seed)
    return splice.VisionEncoderDecoderModel(_config(**composite)).eval()  # eval: no dropout, comparable outputs


def _batch(seed=0, batch=4):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 16, 64, generator=generator)
    labels = torch.randint(4, VOCAB, (batch, 7), generator=generator)
    labels[:, -1] = EOS
    labels[0, 4:] = -100  # a shorter target, padded
    return pixels, labels


def test_ctc_targets_drop_ignored_and_special_tokens():
    labels = torch.tensor([[5, 6, EOS, -100], [BOS, 7, 8, EOS], [9, -100, -100, -100]])
    targets, lengths = ctc_targets(labels, [EOS, PAD, BOS])
    assert lengths.tolist() == [2, 2, 1]
    assert [row[:n] for row, n in zip(targets.tolist(), lengths.tolist())] == [[5, 6], [7, 8], [9]]


def test_ctc_loss_is_low_for_a_matching_path_and_zero_when_infeasible():
    # Logits that spell 5, blank, 6 over three tokens: a near-zero loss for target [5, 6].
    logits = torch.full((1, 3, 8), -20.0)
    logits[0, 0, 5] = logits[0, 1, PAD] = logits[0, 2, 6] = 20.0
    assert ctc_loss(logits, torch.tensor([[5, 6, EOS]]), PAD, [EOS]) < 1e-3
    assert ctc_greedy_decode(logits, PAD) == [[5, 6]]
    too_long = torch.tensor([[5, 6, 7, 3, 4, EOS]])  # 5 characters from 3 tokens: infeasible, zeroed (not inf)
    assert ctc_loss(logits, too_long, PAD, [EOS]).item() == 0.0


def test_ctc_off_adds_nothing_and_changes_nothing():
    plain, off = _model(), _model(ctc_weight=0.0)
    assert off.ctc_head is None  # declared, and nothing in the state dict
    assert list(plain.state_dict()) == list(off.state_dict())
    pixels, labels = _batch()
    with torch.no_grad():
        a, b = plain(pixel_values=pixels, labels=labels), off(pixel_values=pixels, labels=labels)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(plain.generate(pixels, **kwargs), off.generate(pixels, **kwargs))


def test_ctc_on_trains_saves_loads_and_leaves_generation_unchanged(tmp_path):
    plain, model = _model(), _model(ctc_weight=0.5)
    assert set(model.state_dict()) - set(plain.state_dict()) == {"ctc_head.weight", "ctc_head.bias"}
    assert model.ctc_head.weight.shape == (VOCAB, 32)
    pixels, labels = _batch()
    with torch.no_grad():
        attention_only = plain(pixel_values=pixels, labels=labels).loss
        joint = model(pixel_values=pixels, labels=labels).loss
    # Same seed, same parts: the attention loss is shared, so the joint loss differs by the weighted CTC term.
    assert not torch.isclose(attention_only, joint)

    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        assert model.ctc_head.weight.grad is not None and model.ctc_head.weight.grad.abs().sum() > 0
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]

    model.eval().save_pretrained(tmp_path)
    loaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert loaded.config.ctc_weight == 0.5 and loaded.config.ctc_blank_token_id is None
    torch.testing.assert_close(loaded.ctc_head.weight, model.ctc_head.weight)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=pixels, labels=labels).loss, model(pixel_values=pixels, labels=labels).loss
        )
    # The head only adds a loss: the same weights without it generate the same ids.
    without = _model(ctc_weight=0.0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ctc_head.")}
    without.load_state_dict(state)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(model.generate(pixels, **kwargs), without.generate(pixels, **kwargs))


def test_ctc_weight_out_of_range_is_refused():
    with pytest.raises(ValueError, match="ctc_weight"):
        _config(ctc_weight=1.5)


def test_ctc_weight_passes_through_train_model_kwargs(tmp_path):
    from splice.training.config import TrainConfig
    from splice.training.pipeline import train

    encoder, decoder = cli_encoder(image_size=[32, 64], patch_size=[32, 4]), cli_decoder()
    config = TrainConfig(
        encoder=encoder, decoder=decoder, data="builtin:ocr", image_size=[64, 32], n_train=8, n_eval=4, epochs=1,
        batch_size=4, output_dir=str(tmp_path), model_kwargs={"ctc_weight": 0.3}, data_options={"max_words": 1},
    )  # fmt: skip
    train(config)
    loaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    assert loaded.config.ctc_weight == 0.3 and "ctc_head.weight" in loaded.state_dict()


def test_line_encoder_keeps_columns_in_order_and_saves_in_a_composite(tmp_path):
    from splice.models.line_encoder import LineEncoderConfig

    config = LineEncoderConfig(image_size=[32, 64], channels=[8, 16, 16, 16], hidden_size=32, num_hidden_layers=1)
    encoder = splice.models.line_encoder.LineEncoderModel(config).eval()
    pixels = torch.randn(2, 3, 32, 64)
    states = encoder(pixels).last_hidden_state
    assert states.shape == (2, 16, 32) and config.num_tokens == 16  # one token per 4-pixel column
    decoder = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=4, n_positions=32, vocab_size=VOCAB)
    composite = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        config,
        decoder,
        decoder_start_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        ctc_weight=0.5,
    )
    model = splice.VisionEncoderDecoderModel(composite).eval()
    model.save_pretrained(tmp_path)
    loaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    kwargs = dict(max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(model.generate(pixels, **kwargs), loaded.generate(pixels, **kwargs))


@pytest.mark.slow  # a demo run, end to end (`-m slow`, .ci/run's own step)
def test_a_smaller_ocr_demo_runs_reports_held_out_sets_and_saves_for_caption(tmp_path, capsys):
    import dataclasses

    from splice.cli import main
    from splice.cli.demo import OCR_DEMO, ocr_held_out_sets, run_demo

    settings = dataclasses.replace(
        OCR_DEMO, width=32, encoder_layers=1, decoder_layers=1, n_train=32, n_eval=4, n_held_out=2, epochs=1,
        batch_size=16,
    )  # fmt: skip
    metrics = run_demo("ocr", str(tmp_path / "model"), ocr=settings)
    printed = capsys.readouterr().out
    assert set(metrics["held_out"]) == set(ocr_held_out_sets(settings)) and 0 <= metrics["cer"]
    assert "held-out composition" in printed and "DejaVuSerifCondensed.ttf" in printed
    assert printed.count("epoch 1/1: train loss") == 1 and "{'loss'" not in printed
    image = tmp_path / "line.png"
    splice.data.builtin.make_dataset("ocr", 1, seed=5)[0].image.save(image)
    main(["caption", str(tmp_path / "model"), str(image)])
    assert capsys.readouterr().out.strip()  # `splice caption` reads the saved model
