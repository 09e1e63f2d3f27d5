"""The FAISS index of a datastore: chosen by size, trained on a sample, filled in chunks, kept on disk.

The rule ([`choose_index`], `--index auto`): up to `FLAT_LIMIT` keys an exact flat index (`"Flat"`); above it an
inverted file with 8-bit scalar-quantised keys, `"IVF{nlist},SQ8"`: `nlist` lists, the power of two nearest to `√N`
(at most `N / 39`: FAISS's k-means wants 39 points per list), `D` bytes per key (a quarter of float32), searched with
`nprobe = nlist / 16` lists per query. `--index` names another kind (`flat`, `ivfsq`, `ivfpq`: `D / 4` bytes per key
but far slower to train, `ivfflat`: exact keys) or any FAISS `index_factory` string.

[`build_index`] reads the keys from a raw float32 file (`vectors.f32`, `[N, D]`) in chunks: it trains on a random
sample, fills an IVF index shard by shard and merges the shards into on-disk inverted lists (`index.ivfdata`,
FAISS's `OnDiskInvertedLists`), so neither building nor searching holds the lists in memory. [`read_index`] maps a
flat index's vectors or an IVF index's lists from disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._compat import faiss_mapped_flat_flag

INDEX_NAME = "index.faiss"
IVFDATA_NAME = "index.ivfdata"
FLAT_LIMIT = 262_144  # 2**18 keys: a flat search of 2**18 x 512 float32 keys (512 MiB) still takes tens of ms
INDEX_KINDS = ("auto", "flat", "ivfsq", "ivfpq", "ivfflat")
IVF_CODES = {"ivfsq": "SQ8", "ivfflat": "Flat"}  # how an IVF kind stores its keys (ivfpq's code size depends on D)
TRAIN_POINTS_PER_LIST = 39  # below this FAISS's k-means warns that it has too few points
MIN_TRAIN_POINTS = 65_536  # PQ's 256 centroids per sub-quantiser want ~39 x 256 points; IVF's lists more
SHARD_ROWS = 1 << 20  # keys per IVF shard written before the on-disk merge (its codes are held in memory)
CHUNK_ROWS = 1 << 16  # keys read from vectors.f32 and added at a time
VECTOR_DTYPE = np.dtype("<f4")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("splice.retrieval needs FAISS: `pip install faiss-cpu` (or faiss-gpu).") from error
    return faiss


def choose_index(count: int, dim: int, kind: str = "auto", flat_limit: int = FLAT_LIMIT) -> str:
    r"""
    The FAISS `index_factory` string for `count` keys of dimension `dim`.

    Args:
        count (`int`): keys in the datastore.
        dim (`int`): their dimension.
        kind (`str`, *optional*, defaults to `"auto"`): `"auto"` (flat up to `flat_limit` keys, else `"ivfsq"`),
            `"flat"`, `"ivfsq"`, `"ivfpq"`, `"ivfflat"`, or a FAISS factory string (returned as it is).
        flat_limit (`int`, *optional*, defaults to `FLAT_LIMIT`): the most keys `"auto"` indexes exactly.

    Returns:
        `str`: e.g. `"Flat"` or `"IVF1024,SQ8"`.
    """
    if kind == "auto":
        kind = "flat" if count <= flat_limit else "ivfsq"
    if kind == "flat":
        return "Flat"
    if kind not in INDEX_KINDS:
        return kind  # a factory string, checked by FAISS when built
    most = max(1, count // TRAIN_POINTS_PER_LIST)
    nlist = 2 ** min(round(math.log2(math.sqrt(count))), int(math.log2(most)))
    if kind in IVF_CODES:
        return f"IVF{nlist},{IVF_CODES[kind]}"
    m = max(d for d in range(1, dim // 4 + 1) if dim % d == 0) if dim >= 4 else dim  # a divisor of dim near dim / 4
    # 8-bit codes want 39 x 256 training points per sub-quantiser; small datastores get fewer bits.
    bits = max(1, min(8, int(math.log2(max(2, count // TRAIN_POINTS_PER_LIST)))))
    return f"IVF{nlist},PQ{m}" + ("" if bits == 8 else f"x{bits}")


def default_nprobe(factory: str) -> int | None:
    """Lists searched per query for an IVF factory string (`nlist / 16`, at least 1); `None` for other indexes."""
    head = factory.split(",")[0]
    if not (head.startswith("IVF") and head[3:].isdigit()):
        return None
    return max(1, int(head[3:]) // 16)


def read_vectors(path: str | os.PathLike, dim: int, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` of a raw float32 `[N, dim]` file, read (not mapped), so they leave memory when dropped."""
    count = (stop - start) * dim
    vectors = np.fromfile(path, VECTOR_DTYPE, count=count, offset=start * dim * VECTOR_DTYPE.itemsize)
    if vectors.size != count:
        raise ValueError(f"datastore file {str(path)!r} is truncated: rows {start}:{stop} are not all there")
    return vectors.reshape(stop - start, dim)


def _chunks(path: Path, dim: int, start: int, stop: int, bar: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows `start:stop` of `path`, `CHUNK_ROWS` at a time, with their ids (row numbers)."""
    for begin in range(start, stop, CHUNK_ROWS):
        end = min(stop, begin + CHUNK_ROWS)
        yield read_vectors(path, dim, begin, end), np.arange(begin, end, dtype=np.int64)  # [C, D], [C]
        bar.update(end - begin)


def _training_sample(path: Path, count: int, dim: int, points: int) -> np.ndarray:
    """`points` distinct rows chosen at random (seed 0), in file order."""
    if points >= count:
        return read_vectors(path, dim, 0, count)
    rows = np.sort(np.random.default_rng(0).choice(count, points, replace=False))
    mapped = np.memmap(path, VECTOR_DTYPE, "r", shape=(count, dim))
    sample = np.ascontiguousarray(mapped[rows])  # [points, D]
    del mapped
    return sample


def build_index(
    vectors: str | os.PathLike, count: int, dim: int, factory: str, directory: str | os.PathLike, progress: bool = True
) -> None:
    r"""
    Build the index `factory` over the keys in `vectors` and write it to `directory` (`index.faiss`, and
    `index.ivfdata` for an IVF index).

    Args:
        vectors (`str` or `os.PathLike`): raw little-endian float32 keys, `[count, dim]`, L2-normalised.
        count (`int`): keys.
        dim (`int`): their dimension.
        factory (`str`): a FAISS `index_factory` string, inner-product metric (see [`choose_index`]).
        directory (`str` or `os.PathLike`): where to write the index.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar while adding keys.
    """
    faiss = _faiss()
    vectors, directory = Path(vectors), Path(directory)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"--index {factory!r} is not a FAISS index_factory string ({str(error).splitlines()[-1]}); use one of "
            f"{', '.join(INDEX_KINDS)} or e.g. 'IVF1024,PQ64'"
        ) from None
    ivf = faiss.try_extract_index_ivf(index)
    if not index.is_trained:
        nlist = ivf.nlist if ivf is not None else 1
        index.train(_training_sample(vectors, count, dim, max(MIN_TRAIN_POINTS, TRAIN_POINTS_PER_LIST * nlist)))
    bar = tqdm(total=count, desc=f"Indexing {factory}", unit="key", disable=not progress)
    with bar:
        if ivf is None:  # flat (or another index without inverted lists): filled in memory, written once
            for chunk, _ in _chunks(vectors, dim, 0, count, bar):
                index.add(chunk)
            faiss.write_index(index, str(directory / INDEX_NAME))
            return
        empty = faiss.serialize_index(index)  # trained, no keys: the template of each shard
        shards = []
        for number, start in enumerate(range(0, count, SHARD_ROWS)):
            shard = faiss.deserialize_index(empty)
            for chunk, ids in _chunks(vectors, dim, start, min(count, start + SHARD_ROWS), bar):
                shard.add_with_ids(chunk, ids)  # ids across shards, so the merged lists need no shifting
            shards.append(str(directory / f"shard-{number}.faiss.tmp"))
            faiss.write_index(shard, shards[-1])
            del shard
    from faiss.contrib.ondisk import merge_ondisk

    with _faiss_prints_to_stderr():
        merge_ondisk(index, shards, str(directory / IVFDATA_NAME))
    faiss.write_index(index, str(directory / INDEX_NAME))
    for shard in shards:
        os.remove(shard)


def read_index(directory: str | os.PathLike, factory: str | None = None, nprobe: int | None = None) -> Any:
    r"""
    Read `directory/index.faiss`: an IVF index with its lists left in `index.ivfdata` beside it, a flat index with its
    vectors mapped from the file.

    Args:
        directory (`str` or `os.PathLike`): the datastore directory.
        factory (`str`, *optional*): the index's factory string (from `datastore.json`); without it (a datastore saved
            by [`Datastore.save`]) the index is read into memory.
        nprobe (`int`, *optional*): lists an IVF index searches per query (default: [`default_nprobe`]).
    """
    faiss = _faiss()
    directory = Path(directory)
    ivf = factory is not None and default_nprobe(factory) is not None
    for name in (INDEX_NAME, IVFDATA_NAME) if ivf else (INDEX_NAME,):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"datastore file {str(directory / name)!r} is missing; copy the whole datastore directory, or "
                "rebuild it with `splice datastore build`"
            )
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR if ivf else (0 if factory is None else faiss_mapped_flat_flag(faiss))
    path = directory / INDEX_NAME
    try:
        with _faiss_prints_to_stderr():
            index = faiss.read_index(str(path), flags)
    except RuntimeError as error:
        raise ValueError(
            f"datastore file {str(path)!r} cannot be read by FAISS ({str(error).strip().splitlines()[-1]}); the file "
            "is corrupt or truncated: rebuild with `splice datastore build`"
        ) from None
    if ivf:
        faiss.extract_index_ivf(index).nprobe = nprobe or default_nprobe(factory)
    return index


@contextlib.contextmanager
def _faiss_prints_to_stderr() -> Iterator[None]:
    """FAISS's on-disk lists print progress from C++ to file descriptor 1: send it to 2, so stdout stays data."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
