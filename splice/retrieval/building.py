"""Building a datastore on disk from a caption stream of any length, one batch at a time.

[`build_datastore`] embeds a corpus file (or any iterable of caption batches) with an [`Embedder`];
[`write_datastore`] takes batches already embedded (e.g. by Ray Data workers, `splice.scale.datastore`). Either
way the keys stream into `vectors.f32` and the captions into `captions.jsonl` + `captions.offsets`; then the index is
chosen by the number of keys ([`choose_index`]), trained on a sample and filled in chunks ([`build_index`]).
`datastore.json` is written last, so a directory without it is an unfinished build. `vectors.f32` is deleted after
indexing unless `keep_vectors` (an IVF-PQ index keeps only codes of the keys).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from .datastore import CAPTIONS_NAME, META_NAME
from .embedder import Embedder, _normalised
from .index import FLAT_LIMIT, VECTOR_DTYPE, build_index, choose_index, default_nprobe
from .sources import Batch, caption_batches
from .store import CaptionWriter

VECTORS_NAME = "vectors.f32"
EmbeddedBatch = tuple[list[str], list[str | None], Any]  # captions, groups, keys [B, D]


def build_datastore(
    captions: str | os.PathLike | Iterable[Batch],
    embedder: Embedder,
    directory: str | os.PathLike,
    index: str = "auto",
    batch_size: int = 64,
    keep_vectors: bool = False,
    flat_limit: int = FLAT_LIMIT,
    progress: bool = True,
) -> dict[str, Any]:
    r"""
    Embed a caption stream with `embedder` (text keys) and write a datastore to `directory`; load it with
    [`Datastore.load`].

    Args:
        captions (`str`, `os.PathLike` or iterable): a `.txt`, `.jsonl` or `.parquet` corpus (read in batches, see
            [`caption_batches`]), or an iterable of `(captions, groups)` batches.
        embedder ([`Embedder`]): embeds the captions (and later the queries).
        directory (`str` or `os.PathLike`): where to write the datastore (created if needed).
        index (`str`, *optional*, defaults to `"auto"`): the index kind or FAISS factory string ([`choose_index`]).
        batch_size (`int`, *optional*, defaults to 64): captions per embedder call.
        keep_vectors (`bool`, *optional*, defaults to `False`): keep the keys as `vectors.f32` (`[count, dim]`).
        flat_limit (`int`, *optional*, defaults to `FLAT_LIMIT`): the most keys `index="auto"` indexes exactly.
        progress (`bool`, *optional*, defaults to `True`): show progress bars.

    Returns:
        `dict`: the datastore's `datastore.json`.
    """
    batches = caption_batches(captions, batch_size) if isinstance(captions, str | os.PathLike) else captions
    embedded = (
        (texts, groups, embedder.embed_texts(texts, batch_size, progress=False))
        for texts, groups in tqdm(batches, desc="Embedding captions", unit="batch", disable=not progress)
    )
    return write_datastore(embedded, embedder.identity, directory, index, keep_vectors, flat_limit, progress)


def write_datastore(
    batches: Iterable[EmbeddedBatch],
    identity: dict[str, Any],
    directory: str | os.PathLike,
    index: str = "auto",
    keep_vectors: bool = False,
    flat_limit: int = FLAT_LIMIT,
    progress: bool = True,
) -> dict[str, Any]:
    r"""
    Write a datastore of text keys from batches of `(captions, groups, keys)`, the keys already embedded.

    Args:
        batches (iterable): `(captions, groups, keys [B, D])`; keys are L2-normalised here.
        identity (`dict`): the identity of the embedder that made the keys ([`Embedder.identity`]).
        directory (`str` or `os.PathLike`): where to write the datastore.
        index (`str`, *optional*, defaults to `"auto"`): the index kind or FAISS factory string ([`choose_index`]).
        keep_vectors (`bool`, *optional*, defaults to `False`): keep `vectors.f32`.
        flat_limit (`int`, *optional*, defaults to `FLAT_LIMIT`): the most keys `index="auto"` indexes exactly.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar while indexing.

    Returns:
        `dict`: the datastore's `datastore.json`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_NAME).unlink(missing_ok=True)  # the directory is not a datastore until the build finishes
    identity = json.loads(json.dumps(identity))
    digest = hashlib.sha256(json.dumps([identity, "text"]).encode())
    vectors_path = directory / VECTORS_NAME
    writer = CaptionWriter(directory / CAPTIONS_NAME)
    group_sizes = _GroupSizes()
    dim = None
    try:
        with open(vectors_path, "wb") as vectors_file:
            for captions, groups, keys in batches:
                keys = _normalised(keys).astype(VECTOR_DTYPE, copy=False)  # [B, D]
                if len(keys) != len(captions) or len(groups) != len(captions):
                    raise ValueError(f"A batch has {len(captions)} captions, {len(groups)} groups, {len(keys)} keys.")
                if dim is not None and keys.shape[1] != dim:
                    raise ValueError(f"Keys of dimension {keys.shape[1]} after keys of dimension {dim}.")
                dim = keys.shape[1]
                groups = [None if g is None else str(g) for g in groups]  # as `Datastore.build` stores them
                vectors_file.write(keys.tobytes())
                digest.update(keys.tobytes())
                digest.update(writer.write(captions, groups))
                group_sizes.add(groups)
    finally:
        writer.close()
    if dim is None:
        raise ValueError("Cannot build a datastore from no captions.")
    factory = choose_index(writer.count, dim, index, flat_limit)
    build_index(vectors_path, writer.count, dim, factory, directory, progress)
    if not keep_vectors:
        vectors_path.unlink()
    meta = {
        "embedder": identity,
        "keys": "text",
        "dim": dim,
        "count": writer.count,
        "index": factory,
        "nprobe": default_nprobe(factory),
        "max_group_size": group_sizes.largest(),
        "vectors": VECTORS_NAME if keep_vectors else None,
        "fingerprint": digest.hexdigest(),
        "splice_version": __version__,
    }
    (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class _GroupSizes:
    """The size of the largest group, counted from 8-byte hashes of the group ids (not the ids themselves)."""

    def __init__(self):
        self.hashes: list[np.ndarray] = []

    def add(self, groups: Iterable[str | None]) -> None:
        named = [g for g in groups if g is not None]
        if named:
            self.hashes.append(np.fromiter(_hashes(named), np.uint64, len(named)))

    def largest(self) -> int:
        if not self.hashes:
            return 0
        return int(np.unique(np.concatenate(self.hashes), return_counts=True)[1].max())


def _hashes(groups: list[str]) -> Iterator[int]:
    for group in groups:
        yield int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "little")
