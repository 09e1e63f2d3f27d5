"""SmallCap preset: parameter parity with the original, frozen parts, any decoder, batched retrieval prompts."""

import pytest
import torch
import transformers as T
from tiny import cli_decoder, cli_encoder

import splice
import splice.conditioning.injected
from splice.data import SpliceCollator
from splice.data.builtin import train_tokenizer
from splice.models.smallcap import NO_RETRIEVAL_PROMPT, SmallCapConfig, SmallCapModel, build_prompt

CAPTIONS = ["a red circle on the left", "a blue square on the right", "a green star at the top", "two red squares"]


def original_trainable(r: int, width: int = 768, layers: int = 12) -> int:
    """The original's count: per layer q D->D/r, kv D->2D/r, out D/r->D, all with bias."""
    inner = width // r
    return layers * ((width * inner + inner) + (width * 2 * inner + 2 * inner) + (inner * width + width))


@pytest.mark.parametrize("r", [1, 2, 4, 8, 16])
def test_trainable_parameters_match_the_original_at_gpt2_base_and_clip_b32_dimensions(r):
    vision = T.CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    config = SmallCapConfig.from_encoder_decoder_configs(vision, T.GPT2Config(), cross_attention_reduce_factor=r)
    with torch.device("meta"):  # dimensions of the real models, no memory
        model = SmallCapModel(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == original_trainable(r)
    assert {4: 7_094_016, 1: 28_348_416}.get(r, trainable) == trainable
    frozen_norms = [n for n, p in model.named_parameters() if "ln_cross_attn" in n and not p.requires_grad]
    assert len(frozen_norms) == 24  # the layer norms stay frozen, as in the original


def tiny_parts(decoder="gpt2"):
    vision = T.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    )
    tokenizer = train_tokenizer(CAPTIONS + [NO_RETRIEVAL_PROMPT, build_prompt(CAPTIONS)])
    special = dict(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if decoder == "gpt2":
        dec = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **special)
    else:
        dec = T.LlamaConfig(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            **special,
        )  # fmt: skip
    return vision, dec, tokenizer


def tiny_model(decoder="gpt2", r=4):
    vision, dec, tokenizer = tiny_parts(decoder)
    torch.manual_seed(0)
    model = SmallCapModel(SmallCapConfig.from_encoder_decoder_configs(vision, dec, cross_attention_reduce_factor=r))
    with torch.no_grad():  # weights large enough that captions differ between images and prompts
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 0.3)
            elif name.endswith("gate"):
                param.fill_(1.0)
    processor = splice.SpliceProcessor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32), tokenizer)
    return model.eval(), processor


def test_frozen_by_default_and_any_decoder_gets_injected_reduced_cross_attention():
    model, _ = tiny_model("llama", r=4)
    assert model.config.conditioning == "injected"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    injected = {n for n, _ in splice.conditioning.injected.cross_attention_parameters(model)}
    assert trainable == injected
    block = next(layer.cross_attention for _, layer in splice.conditioning.injected.cross_attention_layers(model))
    assert block.q_proj.out_features == 32 // 4
    gpt2, _ = tiny_model("gpt2", r=4)
    assert gpt2.config.conditioning == "native"
    attention = gpt2.decoder.transformer.h[0].crossattention
    assert (attention.q_attn.weight.shape, attention.c_attn.weight.shape) == ((32, 8), (32, 16))
    assert all(not p.requires_grad for p in gpt2.encoder.parameters())


def test_from_encoder_decoder_pretrained_with_a_full_clip_checkpoint(tmp_path):
    vision, dec, _ = tiny_parts()
    clip = T.CLIPModel(
        T.CLIPConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=99
            ),
            vision_config=vision.to_dict(),
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    T.GPT2LMHeadModel(dec).save_pretrained(tmp_path / "gpt2")
    model = SmallCapModel.from_encoder_decoder_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "gpt2"), cross_attention_reduce_factor=4
    ).eval()
    assert isinstance(model.encoder, T.CLIPVisionModel) and model.config.cross_attention_reduce_factor == 4
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    before = model(pixel_values=pixels, decoder_input_ids=ids).logits
    model.save_pretrained(tmp_path / "smallcap")
    reloaded = T.AutoModelForImageTextToText.from_pretrained(tmp_path / "smallcap").eval()
    assert type(reloaded) is SmallCapModel
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }  # still only the cross-attention trains
    assert torch.equal(reloaded(pixel_values=pixels, decoder_input_ids=ids).logits, before)


@pytest.mark.parametrize("decoder", ["gpt2", "llama"])
def test_batched_retrieval_prompts_give_each_image_its_caption_alone(decoder):
    from PIL import Image

    model, processor = tiny_model(decoder)
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    retrieved = [CAPTIONS[:4], CAPTIONS[:1], None]  # prompts of three different lengths
    batched = model.caption(images, processor, retrieved, max_new_tokens=5, min_new_tokens=5)
    alone = [
        model.caption([im], processor, [r], max_new_tokens=5, min_new_tokens=5)[0] for im, r in zip(images, retrieved)
    ]
    assert batched == alone
    assert len(set(batched)) > 1  # the outputs depend on image and prompt, so the check means something
    assert not any(c.startswith(("similar images show", "this image shows")) for c in batched)  # prompt stripped


def test_training_scores_the_caption_not_the_prompt():
    model, processor = tiny_model()
    collator = SpliceCollator.for_model(model, processor.tokenizer)
    records = [{"source": "x", "text": CAPTIONS[0], "prompt": build_prompt(CAPTIONS[1:])}]
    batch = collator(records)
    del batch["input_ids"], batch["attention_mask"]
    prompt_length = len(processor.tokenizer(build_prompt(CAPTIONS[1:]), add_special_tokens=False).input_ids)
    assert (batch["labels"][0, :prompt_length] == -100).all() and (batch["labels"][0, prompt_length:] >= 0).all()
    model.train()
    loss = model(pixel_values=torch.randn(1, 3, 32, 32), **batch).loss
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("crossattention" in n for n in grads)


def test_bad_preset_values_are_explained():
    vision, dec, _ = tiny_parts()
    with pytest.raises(ValueError, match="cross_attention_reduce_factor=3"):
        SmallCapConfig.from_encoder_decoder_configs(vision, dec, cross_attention_reduce_factor=3)
    with pytest.raises(ValueError, match="must contain"):
        SmallCapConfig.from_encoder_decoder_configs(vision, dec, prompt_template="no slot")


def test_adapter_only_checkpoint_of_a_smallcap_model(tmp_path):
    from splice.training.adapters import load_adapter, save_adapter
    from splice.training.freezing import apply_freeze_policy

    model, _ = tiny_model()
    model.save_pretrained(tmp_path / "base")
    apply_freeze_policy(model, "encoder+decoder", verbose=False)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(0.5)  # "trained"
    save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "base"))
    reloaded = load_adapter(tmp_path / "adapter").eval()
    assert type(reloaded) is SmallCapModel and reloaded.config.prompt_template == model.config.prompt_template
    ids, pixels = torch.tensor([[1, 5, 6]]), torch.randn(1, 3, 32, 32)
    assert torch.equal(
        reloaded(pixel_values=pixels, decoder_input_ids=ids).logits,
        model(pixel_values=pixels, decoder_input_ids=ids).logits,
    )


def test_smallcap_preset_trains_saves_its_datastore_and_evaluates_with_it(tmp_path, capsys):
    import json

    from splice.cli import main

    encoder, decoder = cli_encoder(), cli_decoder(n_positions=128)
    main(
        [
            "train",
            "--preset",
            "smallcap",
            "--encoder",
            json.dumps(encoder),
            "--decoder",
            json.dumps(decoder),
            "--n-train",
            "12",
            "--n-eval",
            "4",
            "--batch-size",
            "6",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--data-options",
            '{"domain": "b"}',
            "--output-dir",
            str(tmp_path),
        ]
    )
    model = SmallCapModel.from_pretrained(tmp_path)
    assert (tmp_path / "datastore" / "index.faiss").exists() and model.config.retrieval_k == 4
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["trainable_parameters"] == sum(
        p.numel() for n, p in model.named_parameters() if "crossattention" in n and "ln_" not in n
    )
    capsys.readouterr()
    main(["eval", str(tmp_path), "builtin:shapes", "--n", "4"])
    assert "cider" in json.loads(capsys.readouterr().out)
