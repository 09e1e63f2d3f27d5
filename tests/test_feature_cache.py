"""The frozen-encoder feature cache: fingerprints, encode-once builds, exact features, reuse across runs."""

import copy

import numpy as np
import pytest
import tiny
import torch
import transformers as T
from PIL import Image

import splice
from splice.training.feature_cache import FeatureCache, cached_batch, encoder_fingerprint
from splice.training.freezing import apply_freeze_policy

ENCODER = {"hidden_size": 24}


def vit(seed=0, **kw):
    torch.manual_seed(seed)
    return T.ViTModel(tiny.vit_config(**(ENCODER | kw)), add_pooling_layer=False).eval()


def images(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return list(torch.randn(n, 3, 30, 30, generator=gen))  # n items of [3, 30, 30]


def stack(items):
    return {"pixel_values": torch.stack(items)}  # [B, 3, 30, 30]


class EncodedItems:
    """Counts the items the encoder actually encodes (the sum of the batch sizes of its forwards)."""

    def __init__(self, encoder):
        self.count = 0
        encoder.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.count += kwargs["pixel_values"].shape[0]

    def take(self):
        count, self.count = self.count, 0
        return count


# -- fingerprint ----------------------------------------------------------------------------------------------------


def test_fingerprint_follows_weights_and_config_only(tmp_path):
    encoder = vit()
    fingerprint = encoder_fingerprint(encoder)
    assert encoder_fingerprint(encoder) == fingerprint
    assert encoder_fingerprint(copy.deepcopy(encoder)) == fingerprint
    # Saved and reloaded from elsewhere: same weights and config, same fingerprint (the path is not hashed).
    encoder.save_pretrained(tmp_path / "vit")
    assert encoder_fingerprint(T.ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False)) == fingerprint

    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        changed.layers[1].attention.o_proj.weight[3, 5] += 1e-3
    assert encoder_fingerprint(changed) != fingerprint
    assert encoder_fingerprint(vit(layer_norm_eps=1e-6)) != fingerprint  # same weights, other config


# -- build / get ----------------------------------------------------------------------------------------------------


def test_build_encodes_each_item_once_and_get_returns_the_exact_outputs(tmp_path):
    encoder = vit()
    encoded = EncodedItems(encoder)
    unique = images(7)
    items = unique + unique[:3]  # repeated items (one image, several captions) are encoded once
    cache = FeatureCache(tmp_path, encoder, batch_size=3)

    cache.build(items, stack)
    assert encoded.take() == 7 and cache.misses == 7 and len(cache) == 7
    cache.build(items, stack)  # a second epoch / call
    assert encoded.take() == 0 and cache.misses == 7

    features = cache.get([cache.key(item) for item in items])
    with torch.no_grad():  # same batches as the build, so even the float rounding is the same
        reference = torch.cat([encoder(**stack(unique[i : i + 3])).last_hidden_state for i in range(0, 7, 3)])
    encoded.take()
    assert features.dtype == torch.float32 and features.shape == (10, 10, 24)  # [B, S, E]
    assert torch.equal(features, torch.cat([reference, reference[:3]]))
    assert cache.hits == 10

    # More items later: only the new ones are encoded, the old rows stay valid.
    extra = images(2, seed=1)
    cache.build(unique + extra, stack)
    assert encoded.take() == 2 and len(cache) == 9
    assert torch.equal(cache.get([cache.key(item) for item in unique]), reference)


def test_a_new_run_reuses_the_cache_and_a_changed_encoder_recomputes(tmp_path):
    items = images(5)
    encoder = vit()
    first = FeatureCache(tmp_path, encoder, batch_size=2)
    first.build(items, stack)
    expected = first.get([first.key(item) for item in items])

    rerun = vit()  # a new process: equal weights, new objects
    encoded = EncodedItems(rerun)
    cache = FeatureCache(tmp_path, rerun, batch_size=2)
    cache.build(items, stack)
    assert encoded.take() == 0
    assert torch.equal(cache.get([cache.key(item) for item in items]), expected)

    with torch.no_grad():  # e.g. the encoder was fine-tuned since
        rerun.embeddings.patch_embeddings.projection.weight.mul_(1.5)
    cache.build(items, stack)  # build re-fingerprints: new directory, everything encoded again
    assert encoded.take() == 5 and cache.path.name != encoder_fingerprint(encoder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([encoder_fingerprint(encoder), cache.fingerprint])
    assert not torch.equal(cache.get([cache.key(item) for item in items]), expected)


def test_image_files_are_keyed_by_their_bytes(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "copy.png").write_bytes(paths[0].read_bytes())  # same content, other name: same key

    def load(batch_paths):
        arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in batch_paths])  # [B, H, W, 3]
        return {"pixel_values": torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255}  # [B, 3, H, W]

    encoder = vit()
    encoded = EncodedItems(encoder)
    cache = FeatureCache(tmp_path / "cache", encoder, preprocessing="rescale=1/255")
    cache.build([*paths, tmp_path / "copy.png"], load)
    assert encoded.take() == 3
    features = cache.get([cache.key(p) for p in (tmp_path / "copy.png", paths[0])])
    assert torch.equal(features[0], features[1])
    # Other preprocessing, other features: it is part of the fingerprint.
    assert FeatureCache(tmp_path / "cache", encoder, preprocessing="rescale=1/127").path != cache.path


def test_float16_storage_and_convolutional_feature_maps(tmp_path):
    torch.manual_seed(0)
    encoder = T.ResNetModel(T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).eval()
    items = list(torch.randn(3, 3, 32, 32))
    cache = FeatureCache(tmp_path, encoder, dtype="float16")
    cache.build(items, stack)
    features = cache.get([cache.key(item) for item in items])
    with torch.no_grad():
        reference = encoder(**stack(items)).last_hidden_state  # [B, E, H, W]
    assert features.dtype == torch.float32 and features.shape == reference.shape == (3, 16, 4, 4)
    torch.testing.assert_close(features, reference.half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="stores float16 features; open it with dtype='float16'"):
        FeatureCache(tmp_path, encoder)


def test_get_names_a_missing_item(tmp_path):
    cache = FeatureCache(tmp_path, vit())
    with pytest.raises(KeyError, match="call `build` on every item first"):
        cache.get([cache.key(images(1)[0])])


# -- training -------------------------------------------------------------------------------------------------------


def test_training_on_cached_features_gives_the_same_loss_and_gradients(tmp_path):
    gpt2 = tiny.gpt2_config(pad_token_id=None, n_inner=None)  # GPT-2's own: no pad, 4x inner width
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(tiny.vit_config(**ENCODER), gpt2)
    torch.manual_seed(0)
    model = splice.VisionEncoderDecoderModel(config).eval()  # eval: no dropout, so both paths are deterministic
    apply_freeze_policy(model, "encoder")

    items = images(4)
    cache = FeatureCache(tmp_path, model.encoder, batch_size=4)
    cache.build(items, stack)
    batch = {**stack(items), "labels": torch.randint(3, 99, (4, 6), generator=torch.Generator().manual_seed(1))}

    def loss_and_grads(inputs):
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    cached = cached_batch(cache, batch)
    assert set(cached) == {"encoder_outputs", "labels"}
    encoded = EncodedItems(model.encoder)
    cached_loss, cached_grads = loss_and_grads(cached)
    assert encoded.take() == 0  # the encoder did not run
    loss, grads = loss_and_grads(batch)
    torch.testing.assert_close(cached_loss, loss, rtol=0, atol=1e-6)
    for cached_grad, grad in zip(cached_grads, grads, strict=True):
        torch.testing.assert_close(cached_grad, grad, rtol=0, atol=1e-6)
