"""A disk cache of a frozen encoder's outputs, so training runs the encoder once per image instead of once per epoch.

Layout: `directory/<fingerprint>/features.npy` (one row per item, memory-mapped) and `index.json` (item key → row).
The fingerprint hashes the encoder's config and every weight, so a changed encoder reads and writes a different
directory and stale features are never served. Items are keyed by their content (image file bytes, or the array of
an already preprocessed input), so the cache survives renamed files, reshuffled datasets and new runs.

Training contract: compute the features once with [`FeatureCache.build`], then have the collator put
`encoder_outputs` in the batch in place of the encoder input ([`cached_batch`]); the model, called as
`model(encoder_outputs=..., labels=...)`, then skips the encoder. `encoder_outputs` is an argument of the model's
`forward`, so the `Trainer` keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import logging

from ..data_io import open_image

if TYPE_CHECKING:
    from ..data import SpliceCollator
    from .config import TrainConfig

logger = logging.get_logger(__name__)

FEATURES_NAME = "features.npy"
INDEX_NAME = "index.json"
DTYPES = ("float32", "float16")
# Config entries that `save_pretrained` / `from_pretrained` fill in or change without changing what the encoder
# computes (the weights' dtypes are hashed with the weights).
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "architectures", "dtype", "transformers_version")


def encoder_fingerprint(encoder: nn.Module) -> str:
    """
    A digest that changes whenever the encoder's outputs may change: its config and every weight and buffer.

    Args:
        encoder (`nn.Module`): the encoder (a `PreTrainedModel`, or any module: its class name stands in for a config).

    Returns:
        `str`: sha256 hex digest of the config JSON and a blake2b digest of the state dict (names, dtypes, shapes,
        bytes), hashed in name order. About a second for 100M float32 parameters.
    """
    config = getattr(encoder, "config", None)
    if config is not None:
        config_dict = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        config_json = json.dumps(config_dict, sort_keys=True, default=str)
    else:
        config_json = f"{type(encoder).__module__}.{type(encoder).__qualname__}"
    weights = hashlib.blake2b()
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        weights.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        weights.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes, whatever the dtype (bf16 included)
    return hashlib.sha256(config_json.encode() + weights.digest()).hexdigest()


def _array(item: Any) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly, so keys stay distinct.
        return (item.float() if item.dtype == torch.bfloat16 else item).numpy()
    return np.asarray(item)


def content_key(item: Any) -> str:
    """sha256 of an item's content: a file's bytes, raw bytes, or an array-like's dtype, shape and bytes."""
    if isinstance(item, str | os.PathLike):
        return hashlib.sha256(Path(item).read_bytes()).hexdigest()
    if isinstance(item, bytes | bytearray | memoryview):
        return hashlib.sha256(item).hexdigest()
    array = np.ascontiguousarray(_array(item))
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.data)
    return digest.hexdigest()


class FeatureCache:
    r"""
    The outputs (`last_hidden_state`) of a frozen encoder, computed once and memory-mapped from disk.

    Every item in one cache gives the same output shape, e.g. `[S, E]` for ViT or `[E, H, W]` for a convolutional
    encoder: features come back exactly as the encoder returned them, stacked into a batch.

    The fingerprint is taken when the cache is opened and again by each `build`: change the encoder (e.g. unfreeze and
    train it) and `build` moves to the new fingerprint's directory; `get` alone cannot notice.

    Args:
        directory (`str` or `os.PathLike`): root of the cache; each encoder fingerprint gets a subdirectory.
        encoder (`nn.Module`): the frozen encoder, e.g. `model.encoder`.
        batch_size (`int`, *optional*, defaults to 32): items per encoder forward in `build`.
        device (`str` or `torch.device`, *optional*): where `build` runs the encoder; defaults to its own device.
        dtype (`str`, *optional*, defaults to `"float32"`): storage precision, `"float32"` (exact) or `"float16"`
            (half the disk). `get` returns the encoder's dtype either way.
        preprocessing (`str`, *optional*): anything else the features depend on when items are raw files, e.g.
            `image_processor.to_json_string()`: it is hashed into the fingerprint, so a new image size or
            normalisation does not reuse old features.

    Attributes:
        hits (`int`): items served by `get`.
        misses (`int`): items the encoder computed in `build`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        encoder: nn.Module,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        preprocessing: str | None = None,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}.")
        if any(p.requires_grad for p in encoder.parameters()):
            logger.warning(
                "The encoder has trainable parameters, but cached features do not follow its updates: freeze it "
                "(e.g. `apply_freeze_policy(model, 'encoder')`) when training on cached features."
            )
        self.root = Path(directory)
        self.encoder = encoder
        self.batch_size = batch_size
        reference = next(encoder.parameters(), None)
        self.device = torch.device(device) if device is not None else getattr(reference, "device", torch.device("cpu"))
        self.output_dtype = getattr(reference, "dtype", torch.float32)
        self.dtype = np.dtype(dtype)
        self.preprocessing = preprocessing
        self.hits = 0
        self.misses = 0
        self._path_keys: dict[tuple[str, int, int], str] = {}
        self._open()

    def _open(self) -> None:
        """(Re)compute the fingerprint and load the index and features stored under it."""
        fingerprint = encoder_fingerprint(self.encoder)
        if self.preprocessing is not None:
            fingerprint = hashlib.sha256((fingerprint + self.preprocessing).encode()).hexdigest()
        self.fingerprint = fingerprint
        self.path = self.root / fingerprint
        self.index: dict[str, int] = {}
        self._features: np.memmap | None = None
        if (self.path / INDEX_NAME).exists():
            self.index = json.loads((self.path / INDEX_NAME).read_text())
            self._features = np.lib.format.open_memmap(self.path / FEATURES_NAME, mode="r")
            if self._features.dtype != self.dtype:
                raise ValueError(
                    f"The cache at {self.path} stores {self._features.dtype} features; open it with "
                    f"dtype={self._features.dtype.name!r} or use another directory."
                )

    def __len__(self) -> int:
        return len(self.index)

    def key(self, item: Any) -> str:
        """
        The content key of one item.

        Args:
            item: a file path (its bytes are hashed; remembered per path, size and modification time), raw `bytes`,
                or an array-like (tensor, numpy array, PIL image: its dtype, shape and bytes are hashed, so the rows
                of a preprocessed `pixel_values` batch key the same as the single inputs).

        Returns:
            `str`: sha256 hex digest.
        """
        if isinstance(item, str | os.PathLike):
            stat = os.stat(item)
            memo = (os.path.abspath(item), stat.st_size, stat.st_mtime_ns)
            if memo not in self._path_keys:
                self._path_keys[memo] = content_key(item)
            return self._path_keys[memo]
        return content_key(item)

    @torch.no_grad()
    def build(self, items: Sequence[Any], preprocess: Callable[[list], dict[str, Any]]) -> None:
        """
        Encode the items not cached yet, in batches, and store their features.

        Items repeated in `items` (e.g. one image with five captions) are encoded once. The encoder runs in eval mode
        (restored afterwards). New rows are written to a new file that replaces the old one only when complete, so an
        interrupted build leaves the cache as it was.

        Args:
            items (`Sequence`): the items, as accepted by [`~FeatureCache.key`].
            preprocess (`Callable[[list], dict]`): turns a list of items into the encoder's keyword inputs, e.g.
                `lambda paths: image_processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")`.
        """
        self._open()
        pending: dict[str, Any] = {}
        for item in items:
            key = self.key(item)
            if key not in self.index and key not in pending:
                pending[key] = item
        if not pending:
            return

        old_rows = len(self.index)
        total = old_rows + len(pending)
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.path / f"{FEATURES_NAME}.partial"
        features = None
        keys, values = list(pending), list(pending.values())
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with tqdm(total=len(keys), desc="Encoding features", unit="item") as progress:
                for start in range(0, len(keys), self.batch_size):
                    outputs = self._encode(preprocess(values[start : start + self.batch_size]))  # [B, ...]
                    if features is None:
                        features = self._allocate(partial, total, outputs.shape[1:])
                    features[old_rows + start : old_rows + start + len(outputs)] = outputs
                    progress.update(len(outputs))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            self.encoder.train(was_training)
        features.flush()
        del features  # close the map before the file is renamed
        os.replace(partial, self.path / FEATURES_NAME)
        # The index is replaced after the features: the old index only names rows the new file kept in place.
        self.index.update({key: old_rows + row for row, key in enumerate(keys)})
        index_partial = self.path / f"{INDEX_NAME}.partial"
        index_partial.write_text(json.dumps(self.index))
        os.replace(index_partial, self.path / INDEX_NAME)
        self.misses += len(keys)
        self._features = np.lib.format.open_memmap(self.path / FEATURES_NAME, mode="r")

    def _encode(self, inputs: dict[str, Any]) -> np.ndarray:
        """Run the encoder on one batch of keyword inputs; float32 features (the memmap casts them on assignment)."""
        inputs = {name: self._to_encoder(value) for name, value in dict(inputs).items()}
        hidden = self.encoder(**inputs, return_dict=True).last_hidden_state  # [B, S, E] or [B, E, H, W]
        return hidden.float().cpu().numpy()

    def _to_encoder(self, value: Any) -> Any:
        # Float inputs take the encoder's dtype, as `SpliceModel.caption` does before the encoder runs.
        if not isinstance(value, torch.Tensor):
            return value
        return value.to(self.device, self.output_dtype if value.is_floating_point() else value.dtype)

    def _allocate(self, path: Path, rows: int, item_shape: tuple[int, ...]) -> np.memmap:
        """A new features file of `rows` rows, holding the existing rows at their current positions."""
        if self._features is not None and self._features.shape[1:] != item_shape:
            raise ValueError(
                f"The encoder returned features of shape {item_shape}, but the cache at {self.path} holds "
                f"{self._features.shape[1:]}: every item of one cache must give the same shape (same preprocessing)."
            )
        features = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=(rows, *item_shape))
        if self._features is not None:
            features[: len(self._features)] = self._features
        return features

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """
        The cached features of `keys`, stacked.

        Args:
            keys (`Sequence[str]`): item keys from [`~FeatureCache.key`].

        Returns:
            `torch.Tensor` of shape `[B, *item_shape]` (e.g. `[B, S, E]`), on the CPU, in the encoder's dtype.

        Raises:
            `KeyError`: for a key never built.
        """
        missing = [key for key in keys if key not in self.index]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(keys)} items are not in the feature cache at {self.path} (first: "
                f"{missing[0]}): call `build` on every item first, with the same encoder and preprocessing."
            )
        rows = [self.index[key] for key in keys]
        self.hits += len(keys)
        return torch.from_numpy(self._features[rows]).to(self.output_dtype)  # [B, ...]


def cached_batch(cache: FeatureCache, batch: dict[str, Any], items_key: str = "pixel_values") -> dict[str, Any]:
    """
    Replace a batch's encoder input by its cached encoder outputs.

    Call it at the end of the collator: the model then gets `encoder_outputs` and does not run the encoder.

    Args:
        cache (`FeatureCache`): a cache built on every item of the dataset.
        batch (`dict`): a collated batch; `batch[items_key]` holds the batch's items as given to `build`: a list
            (e.g. image paths) or a stacked tensor whose rows are the items (e.g. `pixel_values` `[B, C, H, W]`,
            when `build` was given the preprocessed `[C, H, W]` inputs).
        items_key (`str`, *optional*, defaults to `"pixel_values"`): the entry holding the items; it is removed.

    Returns:
        `dict`: the batch without `items_key`, with `encoder_outputs=BaseModelOutput(last_hidden_state=[B, ...])`.
    """
    batch = dict(batch)
    items = batch.pop(items_key)
    features = cache.get([cache.key(item) for item in items])  # [B, S, E] or [B, E, H, W]
    batch["encoder_outputs"] = BaseModelOutput(last_hidden_state=features)
    return batch


class CachedFeaturesCollator:
    r"""
    Targets from the records, encoder outputs from the feature cache: the frozen encoder does not run in training.

    Args:
        cache (`FeatureCache`): built on every record's image.
        collator (`SpliceCollator`): makes the targets.
    """

    def __init__(self, cache: FeatureCache, collator: SpliceCollator):
        self.cache, self.collator = cache, collator

    def __call__(self, records: list[dict]) -> dict[str, Any]:
        batch = self.collator.targets(records) | {"images": [r["image"] for r in records]}
        return cached_batch(self.cache, batch, items_key="images")


def cache_encoder_features(
    model: nn.Module, collator: SpliceCollator, records: list[dict], config: TrainConfig, args: Any
) -> CachedFeaturesCollator:
    r"""
    Encode every record's image once with the frozen encoder (main process first), and collate from the cache.

    Args:
        model: the composite, its encoder frozen.
        collator (`SpliceCollator`): makes the targets; its image processor preprocesses the images.
        records (`list[dict]`): every record the run reads (training and held-out).
        config (`TrainConfig`): the cache lives in `output_dir/feature-cache`; `batch_size` images per encoder call.
        args (`TrainingArguments`): the main process builds the cache first.
    """
    processor = collator.image_processor
    cache = FeatureCache(
        Path(config.output_dir) / "feature-cache",
        model.encoder,
        batch_size=config.batch_size,
        preprocessing=processor.to_json_string(),
    )
    with args.main_process_first(desc="encoder feature cache"):
        cache.build(
            [r["image"] for r in records],
            lambda images: processor([open_image(i) for i in images], return_tensors="pt"),
        )
    return CachedFeaturesCollator(cache, collator)
