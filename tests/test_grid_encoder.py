"""`GridEncoderModel` (`splice_grid_encoder`): feature-map tokens with learned 2D positions."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

import splice  # noqa: F401  (registers splice's encoders with the Auto classes)
from splice.models import GridEncoderConfig, GridEncoderModel
from splice.models.grid_encoder import sinusoid_2d

SMALL = {"image_size": 32, "channels": [8, 16, 16], "downsample": 2, "hidden_size": 16, "intermediate_size": 32}


def small_encoder(**overrides) -> GridEncoderModel:
    torch.manual_seed(0)
    return AutoModel.from_config(AutoConfig.for_model("splice_grid_encoder", **(SMALL | overrides))).eval()


def test_tokens_are_the_grid_cells_row_major():
    model = small_encoder(image_size=[32, 48])
    assert isinstance(model, GridEncoderModel) and model.config.grid_size == (8, 12)
    states = model(pixel_values=torch.randn(2, 3, 32, 48)).last_hidden_state
    assert states.shape == (2, 8 * 12, 16)
    assert model(pixel_values=torch.randn(1, 3, 32, 48), return_dict=False)[0].shape == (1, 96, 16)
    with pytest.raises(ValueError, match="built for image_size"):
        model(pixel_values=torch.randn(1, 3, 64, 64))


def test_position_table_encodes_row_and_column():
    table = sinusoid_2d(3, 4, 8)[0].reshape(3, 4, 8)
    assert torch.equal(table[0, :, :4], table[0, :1, :4].expand(4, 4))  # the row half is constant along a row
    assert torch.equal(table[:, 0, 4:], table[:1, 0, 4:].expand(3, 4))  # the column half along a column
    assert len({tuple(t.tolist()) for t in table.reshape(12, 8)}) == 12  # every cell distinct


def test_save_and_load_round_trip_through_auto_model(tmp_path):
    model = small_encoder()
    with torch.no_grad():
        model.position_embeddings.add_(torch.randn_like(model.position_embeddings))  # trained-like, not the init
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "splice_grid_encoder"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GridEncoderModel)
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        loaded(pixel_values=pixels).last_hidden_state, model(pixel_values=pixels).last_hidden_state
    )


@torch.no_grad()
def _mirror_symmetric(model: GridEncoderModel) -> GridEncoderModel:
    """Make every kernel left-right symmetric: the conv stack then commutes with mirroring the image."""
    for module in model.convolutions:
        if isinstance(module, torch.nn.Conv2d):
            module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model


def _mirrored_tokens(states: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return states.reshape(states.shape[0], *grid, -1).flip(2).reshape(states.shape)


@pytest.mark.parametrize("position_init_scale", [0.0, 0.5])
def test_positions_tell_a_mirrored_image_apart(position_init_scale):
    """Without position embeddings a mirrored image gives the same set of tokens, mirrored: cross-attention (which
    sees a set) cannot tell left from right. With them it can."""
    model = _mirror_symmetric(small_encoder(position_init_scale=position_init_scale))
    pixels = torch.randn(2, 3, 32, 32)
    states = model(pixel_values=pixels).last_hidden_state
    mirrored = model(pixel_values=pixels.flip(-1)).last_hidden_state
    expected = _mirrored_tokens(states, model.config.grid_size)
    if position_init_scale == 0.0:
        torch.testing.assert_close(mirrored, expected, atol=1e-5, rtol=1e-4)
    else:
        assert (mirrored - expected).abs().max() > 0.1


def test_config_defaults_give_the_demo_grid():
    config = GridEncoderConfig()
    assert config.grid_size == (8, 8) and config.hidden_size == 128
