"""`splice export` coverage beyond test_export.py (issue 20, item 3): the OCR demo's line encoder (CRNN + transformer
layers) + GPT-2 and the speech composite (Wav2Vec2 + GPT-2). For each: both graphs' logits within 1e-4 of PyTorch
(fp32) and greedy ids identical at batch 1 and 4 (slow: each export traces the model twice)."""

import numpy as np
import pytest
import torch
import transformers as T
from tiny import decoder_config, randomize

import splice
from splice.export import export_onnx, load_model, runtime_logit_diff
from splice.models.line_encoder import LineEncoderConfig
from splice_onnx import OnnxSeq2Seq

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
LOGITS_ATOL = 1e-4
RESULTS: dict = {}


def wav2vec2_config() -> T.Wav2Vec2Config:
    """Layer-norm feature extractor (test_encoders.py's tiny Wav2Vec2)."""
    return T.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, conv_dim=(16, 16, 16),
        conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
    )  # fmt: skip


def line_encoder_config() -> LineEncoderConfig:
    """The OCR demo's encoder (splice/cli/demo.py), shrunk: 32x64 lines, two stages, one transformer layer."""
    return LineEncoderConfig(image_size=[32, 64], channels=[8, 16], width_downsample=2, hidden_size=32,
                             num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)  # fmt: skip


def _save(directory, model):
    model.config.decoder_start_token_id, model.config.pad_token_id = 1, 0
    model.generation_config.decoder_start_token_id = 1
    randomize(model, seed=3, embedding_std=0.1)
    model.save_pretrained(str(directory))
    return str(directory)


BUILDERS = {
    "line_encoder": lambda: splice.VisionEncoderDecoderModel(
        splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(line_encoder_config(), decoder_config("gpt2"))
    ),
    "speech": lambda: splice.SpeechEncoderDecoderModel(
        splice.SpeechEncoderDecoderConfig.from_encoder_decoder_configs(wav2vec2_config(), decoder_config("gpt2"))
    ),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict = {}

    def build(case: str):
        if case not in cache:
            source = _save(tmp_path_factory.mktemp(case), BUILDERS[case]())
            out = tmp_path_factory.mktemp(f"{case}-onnx")
            export_onnx(source, out, progress=None)  # its own check included
            cache[case] = load_model(source), OnnxSeq2Seq.from_pretrained(out)
        return cache[case]

    return build


def _inputs(model, batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if model.encoder.main_input_name == "input_values":  # audio of another length than the export's example
        return {"input_values": torch.randn(batch, 12000 + 800 * seed, generator=gen)}
    height, width = model.config.encoder.image_size
    return {"pixel_values": torch.randn(batch, 3, height, width, generator=gen)}


@pytest.mark.parametrize("case", list(BUILDERS))
def test_logits_match_pytorch(exported, case):
    model, runtime = exported(case)
    inputs = _inputs(model, 4, seed=7)
    diff = runtime_logit_diff(model, runtime, inputs, {k: v.numpy() for k, v in inputs.items()})
    RESULTS[(case, "max |logits diff|")] = diff
    assert diff <= LOGITS_ATOL


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("case", list(BUILDERS))
def test_greedy_ids_match_pytorch(exported, case, batch):
    model, runtime = exported(case)
    inputs = _inputs(model, batch, seed=batch)
    with torch.no_grad():
        expected = model.generate(**inputs, num_beams=1, max_new_tokens=12).numpy()
    got = runtime.generate({k: v.numpy() for k, v in inputs.items()}, num_beams=1, max_new_tokens=12)
    RESULTS[(case, f"greedy ids equal, batch {batch}")] = got.shape == expected.shape and np.array_equal(got, expected)
    np.testing.assert_array_equal(got, expected)


def test_print_table():
    """The parity table, printed with `-s` (runs last in the module)."""
    for key, value in sorted(RESULTS.items()):
        print(key, value)
