"""The README's "JAX / Flax" and "TensorFlow" snippets run as written, with tiny local checkpoints in place of the
paths they name, and what they save loads in PyTorch."""

import re
from pathlib import Path

import pytest
import transformers
from tiny import bert_decoder_config, bert_encoder_config, gpt2_config, randomize, vit_config

import splice

README = Path(__file__).resolve().parents[1] / "README.md"
# End to end: each snippet trains, generates, saves (and exports) a model (`-m slow`, .ci/run's own step).
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _snippet(section: str) -> str:
    text = README.read_text().split(f"## {section}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_jax_snippet(tmp_path, monkeypatch):
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(image_size=64, patch_size=16), gpt2_config(), decoder_start_token_id=1
    )
    randomize(splice.VisionEncoderDecoderModel(config), std=0.25).save_pretrained(tmp_path / "splice-demo-shapes")
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet("JAX / Flax"), "README.md", "exec"), {})
    assert (
        splice.VisionEncoderDecoderModel.from_pretrained(tmp_path / "trained-in-jax").config.decoder_start_token_id == 1
    )


def test_tensorflow_snippet(tmp_path, monkeypatch):
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
        bert_encoder_config(), bert_decoder_config()
    )
    model = randomize(transformers.EncoderDecoderModel(config), std=0.25)
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
    model.save_pretrained(tmp_path / "bert2bert")  # saved by transformers' own class
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippet("TensorFlow").replace("path/to/bert2bert", "bert2bert"), "README.md", "exec"), {})
    assert (tmp_path / "served" / "saved_model.pb").is_file()
    splice.EncoderDecoderModel.from_pretrained(tmp_path / "trained-in-tf")
