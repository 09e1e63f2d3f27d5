"""The documented example of a custom model (docs/custom-models.md) runs and does what it says."""

import importlib.util
import sys
from pathlib import Path

import torch

import splice
import splice.conditioning.injected

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_smallcap.py"


def load_example():
    spec = importlib.util.spec_from_file_location("custom_smallcap", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass configs resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_custom_smallcap_trains_with_seq2seq_trainer_and_reloads():
    example = load_example()
    model = example.build()
    assert model.config.conditioning == "injected" and model.config.cross_attention_reduce_factor == 4
    expected = sum(p.numel() for _, p in splice.conditioning.injected.cross_attention_parameters(model))
    expected += sum(p.numel() for p in model.global_proj.parameters())
    result = example.main(steps=30)
    assert result["trainable"] == expected  # only the cross-attention and the subclass's own module train
    assert result["losses"][-1] < result["losses"][0]
    assert result["predictions"].shape[0] == 8
    assert result["reload_identical"]


def test_the_subclass_changes_what_the_decoder_reads():
    example = load_example()
    torch.manual_seed(0)
    model = example.build().eval()
    states = torch.randn(2, 5, 32)
    adapted, mask = model.adapt_encoder_states(states, torch.ones(2, 5, dtype=torch.long))
    assert adapted.shape == (2, 6, 32) and mask.shape == (2, 6)
    torch.testing.assert_close(adapted[:, 1:], states)
