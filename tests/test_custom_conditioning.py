"""A fourth conditioning mode, defined here and registered, trains, generates and saves/loads with no change to
splice's model code: the strategy interface is the whole contract of a mode."""

import pytest
import torch
from tiny import EOS, PAD, VOCAB, gpt2_config, pixel_values, vit_config
from torch import Tensor, nn

import splice
from splice._compat import cache_kwargs
from splice.conditioning import STRATEGIES, Conditioning, conditioning_parameter_names, register_conditioning
from splice.conditioning.base import self_attention_cache


class Additive(Conditioning):
    """Additive conditioning: the masked mean of the encoder states, projected to the decoder's width, is added to
    every input embedding (FiLM's shift alone). Its projection starts at zero, so a new model is the bare decoder."""

    name = "additive"

    def build(self, model: nn.Module) -> dict[str, nn.Module]:
        width = model.decoder.get_input_embeddings().embedding_dim
        return {"additive_proj": nn.Linear(model.config.encoder.hidden_size, width)}

    def initialize(self, model: nn.Module) -> None:
        for param in model.additive_proj.parameters():
            if not getattr(param, "_is_hf_initialized", False):
                param.zero_()

    def adapt(self, model: nn.Module, states: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        weights = torch.ones(states.shape[:2], device=states.device) if mask is None else mask.float()  # [B, S]
        pooled = (weights[..., None] * states).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)  # [B, E]
        return model.additive_proj(pooled)[:, None, :], None  # [B, 1, D]

    def decode(self, model, states, mask, cache, input_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = model.decoder.get_input_embeddings()(input_ids)  # [B, T, D]
        # The decoder's own cache (generate wraps it), under the installed transformers' name.
        return model.decoder(
            inputs_embeds=inputs_embeds + states, **cache_kwargs(self_attention_cache(cache)), **kwargs
        )


@pytest.fixture
def additive():
    register_conditioning(Additive())
    yield
    del STRATEGIES["additive"]


def _model() -> splice.VisionEncoderDecoderModel:
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), gpt2_config(add_cross_attention=False), conditioning="additive",
        decoder_start_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    torch.manual_seed(0)
    return splice.VisionEncoderDecoderModel(config).eval()


def test_a_registered_mode_trains_generates_and_round_trips(additive, tmp_path):
    model = _model()
    assert model.config.conditioning == "additive"
    assert "additive_proj.weight" in conditioning_parameter_names(model)
    pixels = pixel_values(model.config.encoder)
    ids = torch.tensor([[EOS, 5, 6, 7], [EOS, 8, 9, 10]])
    with torch.no_grad():  # zero-initialised: exactly the bare decoder
        bare = model.decoder(input_ids=ids).logits
        torch.testing.assert_close(model(pixel_values=pixels, decoder_input_ids=ids).logits, bare, rtol=0, atol=0)

    # One training step moves the mode's projection, and the images now change the logits.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    labels = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    model(pixel_values=pixels, labels=labels).loss.backward()
    optimizer.step()
    model.eval()
    assert model.additive_proj.weight.abs().sum() > 0
    with torch.no_grad():
        trained = model(pixel_values=pixels, decoder_input_ids=ids).logits
        other = model(pixel_values=pixel_values(model.config.encoder, seed=3), decoder_input_ids=ids).logits
    assert not torch.allclose(trained, other)

    # generate with the cache = the greedy argmax of full forwards, step by step.
    generated = model.generate(pixels, max_new_tokens=5, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        for step in range(1, generated.shape[1]):
            logits = model(pixel_values=pixels, decoder_input_ids=generated[:, :step]).logits[:, -1]
            assert torch.equal(logits.argmax(-1), generated[:, step])

    model.save_pretrained(tmp_path)
    loaded = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert loaded.config.conditioning == "additive"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels, decoder_input_ids=ids).logits, trained)
    assert torch.equal(loaded.generate(pixels, max_new_tokens=5, do_sample=False, eos_token_id=None), generated)


def test_an_unregistered_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="conditioning='additive' is not one of"):
        _model()
