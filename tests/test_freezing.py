"""Freeze policies, LoRA on the decoder, and adapter-only checkpoints that rebuild the trained model exactly."""

import json
import os

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import gpt2_config, llama_config, vit_config

import splice
from splice.conditioning import conditioning_parameter_names
from splice.conditioning.injected import CrossAttentionLayer
from splice.training.adapters import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    load_adapter,
    save_adapter,
    trainable_state_dict,
)
from splice.training.freezing import apply_freeze_policy
from splice.training.lora import apply_lora

ENC_WIDTH, DEC_WIDTH, LAYERS = 24, 32, 2
PIXELS = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(1))


def build(decoder_config, conditioning):
    torch.manual_seed(0)
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(hidden_size=ENC_WIDTH), decoder_config, conditioning=conditioning
    )
    return splice.VisionEncoderDecoderModel(config)


def numel(*modules):
    return sum(p.numel() for module in modules for p in module.parameters())


def trainable_names(model):
    return {name for name, param in model.named_parameters() if param.requires_grad}


def train(model, steps=3):
    """A few Adam steps: after the first, zero-initialised gates and LoRA B are non-zero, so everything trains."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(pixel_values=PIXELS, labels=LABELS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model.eval()(pixel_values=PIXELS, labels=LABELS).logits


# -- freeze policies ------------------------------------------------------------------------------------------------


def expected_conditioning(model):
    """The conditioning parameter count, summed over the modules each mode adds."""
    conditioning = model.config.conditioning
    if conditioning == "native":
        blocks = model.decoder.transformer.h
        count = numel(*(b.crossattention for b in blocks), *(b.ln_cross_attn for b in blocks), model.enc_to_dec_proj)
        # GPT-2 cross-attention per layer: c_attn (D -> 2D), q_attn, c_proj (D -> D), ln_cross_attn; plus E -> D.
        assert count == LAYERS * (4 * DEC_WIDTH**2 + 6 * DEC_WIDTH) + (ENC_WIDTH + 1) * DEC_WIDTH
        return count
    if conditioning == "injected":
        layers = [m for m in model.decoder.modules() if isinstance(m, CrossAttentionLayer)]
        assert len(layers) == LAYERS
        return numel(*(layer.cross_attention for layer in layers))
    return numel(model.prefix_projector)


@pytest.mark.parametrize(
    "decoder_config, conditioning",
    [(gpt2_config, "native"), (llama_config, "injected"), (llama_config, "prefix")],
    ids=["gpt2-native", "llama-injected", "llama-prefix"],
)
def test_each_policy_trains_the_expected_parameters(decoder_config, conditioning, capsys):
    model = build(decoder_config(), conditioning)
    total = numel(model)

    assert apply_freeze_policy(model, "none") == {"trainable": total, "total": total}
    assert all(p.requires_grad for p in model.parameters())

    counts = apply_freeze_policy(model, "encoder")
    assert counts == {"trainable": total - numel(model.encoder), "total": total}
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())

    counts = apply_freeze_policy(model, "encoder+decoder")
    assert counts == {"trainable": expected_conditioning(model), "total": total}
    assert trainable_names(model) == conditioning_parameter_names(model)
    percent = 100 * counts["trainable"] / total
    assert f"trainable params: {counts['trainable']:,d} || all params: {total:,d} || trainable%: {percent:.4f}" in (
        capsys.readouterr().out
    )


def test_unknown_policy_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"freeze='decoder'.*'none', 'encoder', 'encoder\+decoder'"):
        apply_freeze_policy(build(gpt2_config(), "native"), "decoder")


# -- LoRA -----------------------------------------------------------------------------------------------------------


def test_lora_on_an_injected_llama_trains_only_lora_and_cross_attention():
    model = build(llama_config(), "injected")
    base_size, before = numel(model), logits(model)
    apply_lora(model, r=4)

    names = trainable_names(model)
    lora = {n for n in names if ".lora_" in n}
    assert names - lora == conditioning_parameter_names(model)
    # Every linear layer of the decoder's own blocks is adapted (q, k, v, o, gate, up, down), not the injected
    # cross-attention, not the LM head; each gets r * (in + out) weights.
    adapted = [model.get_submodule(name) for name in sorted({n.split(".lora_")[0] for n in lora})]
    assert len(adapted) == 7 * LAYERS
    assert all(".base_layer." in n and ".cross_attention." not in n and "lm_head" not in n for n in lora)
    lora_size = sum(p.numel() for n, p in model.named_parameters() if n in lora)
    assert lora_size == numel(model) - base_size == sum(4 * (m.in_features + m.out_features) for m in adapted)
    # LoRA starts as a zero update, and the composite still decodes.
    assert torch.equal(logits(model), before)
    assert model.generate(PIXELS, max_new_tokens=3).shape == (2, 4)


def test_lora_explicit_targets_skip_cross_attention():
    model = build(llama_config(), "injected")
    apply_lora(model, target_modules=["q_proj", "v_proj"])
    adapted = {n.split(".lora_")[0] for n in trainable_names(model) if ".lora_" in n}
    assert len(adapted) == 2 * LAYERS and not any("cross_attention" in n for n in adapted)


def test_a_training_step_changes_only_trainable_parameters():
    model = build(llama_config(), "injected")
    apply_lora(model)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    train(model, steps=2)
    changed = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    assert changed and changed <= trainable_names(model)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# -- adapter checkpoints --------------------------------------------------------------------------------------------


def test_adapter_from_a_full_checkpoint_reproduces_the_trained_model(tmp_path):
    model = build(llama_config(), "injected")
    model.save_pretrained(tmp_path / "base")
    apply_lora(model)
    train(model)

    save_adapter(model, tmp_path / "adapter", base=tmp_path / "base")
    weights = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME)
    assert set(weights) == set(trainable_state_dict(model)) == trainable_names(model)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert os.path.getsize(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME) < full_bytes / 2
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["base_model"] == str(tmp_path / "base") and config["freeze"] == "encoder+decoder"
    assert config["lora"]["r"] == 8 and config["splice_config"]["conditioning"] == "injected"

    loaded = load_adapter(tmp_path / "adapter")
    assert type(loaded) is splice.VisionEncoderDecoderModel
    assert trainable_names(loaded) == trainable_names(model)
    assert torch.equal(logits(loaded), logits(model))


def test_adapter_from_encoder_and_decoder_checkpoints_reproduces_the_trained_model(tmp_path):
    torch.manual_seed(0)
    T.ViTModel(vit_config(hidden_size=ENC_WIDTH)).save_pretrained(tmp_path / "encoder")
    T.GPT2LMHeadModel(gpt2_config()).save_pretrained(tmp_path / "decoder")
    base = {"encoder": str(tmp_path / "encoder"), "decoder": str(tmp_path / "decoder")}
    model = splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        base["encoder"], base["decoder"], decoder_start_token_id=1
    )
    apply_freeze_policy(model, "encoder")  # the whole decoder trains, its tied LM head once
    train(model)

    save_adapter(model, tmp_path / "adapter", base=base)
    with safe_open(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME, framework="pt") as f:
        assert set(f.keys()) == trainable_names(model)
    loaded = load_adapter(tmp_path / "adapter")
    assert torch.equal(logits(loaded), logits(model))
    assert trainable_names(loaded) == trainable_names(model)


def test_tampered_adapter_names_the_offending_key(tmp_path):
    model = build(llama_config(), "prefix")
    model.save_pretrained(tmp_path / "base")
    apply_freeze_policy(model, "encoder+decoder")
    save_adapter(model, tmp_path / "adapter", base=tmp_path / "base")

    path = tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME
    weights = load_file(path)
    save_file({**weights, "decoder.extra.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"Unexpected keys: \['decoder.extra.weight'\]. Missing keys: \[\]"):
        load_adapter(tmp_path / "adapter")

    weights.pop("prefix_projector.proj.0.bias")
    save_file(weights, path)
    with pytest.raises(ValueError, match=r"Missing keys: \['prefix_projector.proj.0.bias'\]"):
        load_adapter(tmp_path / "adapter")
