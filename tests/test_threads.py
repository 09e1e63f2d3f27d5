"""Two threads generating with one model at once get what each gets alone (nothing per call lives on the modules)."""

import threading

import pytest
import torch
from tiny import BOS, PAD, gpt2_config, llama_config, pixel_values, randomize, vit_config

import splice


def _model(decoder_config, conditioning):
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        vit_config(), decoder_config, decoder_start_token_id=BOS, pad_token_id=PAD, conditioning=conditioning
    )
    return randomize(splice.VisionEncoderDecoderModel(config)).eval()


@pytest.mark.parametrize(
    ("decoder", "conditioning"), [(llama_config, "injected"), (gpt2_config, "native"), (llama_config, "prefix")]
)
def test_two_threads_generate_on_one_model_as_alone(decoder, conditioning):
    model = _model(decoder(), conditioning)
    inputs = [pixel_values(model.config.encoder, batch=2, seed=seed) for seed in (0, 1)]
    settings = [dict(max_new_tokens=8, min_new_tokens=8), dict(max_new_tokens=8, min_new_tokens=8, num_beams=3)]
    alone = [model.generate(x, **kw) for x, kw in zip(inputs, settings)]
    together: list = [None, None]
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        for _ in range(3):  # several rounds, so the steps of the two calls interleave
            together[i] = model.generate(inputs[i], **settings[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not torch.equal(alone[0], alone[1][: alone[0].shape[0]])  # the two calls differ: the test can fail
    for got, expected in zip(together, alone):
        assert torch.equal(got, expected), conditioning
