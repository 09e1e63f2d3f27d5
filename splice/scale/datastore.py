"""Building a datastore with Ray Data's embedding workers: `splice datastore build --captions FILE --ray`.

Ray Data reads the corpus (`.txt`, `.jsonl` or `.parquet`) in blocks; a pool of actors (`ActorPoolStrategy(size=
workers)`) each load the text embedder once and embed batches of captions; the embedded rows stream back to this
process in corpus order (`preserve_order`) into `splice.retrieval.write_datastore`, which writes the keys and
captions to disk and builds the index from them, exactly as the single-process build does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..retrieval import FLAT_LIMIT, Embedder, write_datastore
from .cluster import import_ray


class _EmbedCaptions:
    """A Ray Data actor: loads the embedder once, then embeds batches of `{"caption", "group"}` rows."""

    def __init__(self, embedder: str, batch_size: int):
        self.embedder = Embedder.from_pretrained(embedder)
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> dict[str, Any]:
        captions = batch.column("caption").to_pylist()  # [B]
        groups = batch.column("group").to_pylist() if "group" in batch.column_names else [None] * len(captions)
        return {
            "caption": np.array(captions, dtype=object),
            "group": np.array([None if g is None else str(g) for g in groups], dtype=object),
            "vector": self.embedder.embed_texts(captions, self.batch_size, progress=False),  # [B, D]
        }


def _stripped_lines(batch: Any) -> dict[str, Any]:
    """`.txt` lines as captions, as `splice.retrieval.caption_batches` reads them: stripped, blank ones dropped."""
    captions = [line.strip() for line in batch.column("text").to_pylist() if line.strip()]
    return {"caption": np.array(captions, dtype=object)}


# Reading is I/O, not a CPU of its own: the embedding actors hold the CPUs, and reads that waited for one would wait
# for the actors, which wait for the reads.
LIGHT = {"num_cpus": 0}


def _read(captions: Path) -> Any:
    """The corpus as a Ray dataset with a `caption` column (and `group`, when the file has one)."""
    data = import_ray().data
    if captions.suffix == ".txt":
        lines = data.read_text(str(captions), **LIGHT)
        return lines.map_batches(_stripped_lines, batch_format="pyarrow", **LIGHT)
    if captions.suffix == ".jsonl":
        return data.read_json(str(captions), lines=True, **LIGHT)
    if captions.suffix == ".parquet":
        return data.read_parquet(str(captions), **LIGHT)
    raise ValueError(f"captions {str(captions)!r}: must be a .txt, .jsonl or .parquet file")


def build_datastore_on_ray(
    captions: str | os.PathLike,
    embedder: str,
    directory: str | os.PathLike,
    workers: int = 2,
    batch_size: int = 64,
    index: str = "auto",
    keep_vectors: bool = False,
    flat_limit: int = FLAT_LIMIT,
    progress: bool = True,
) -> dict[str, Any]:
    r"""
    Embed a caption corpus on Ray Data workers and write a datastore to `directory`, equal to the one
    `splice.retrieval.build_datastore` writes in one process. Call with a Ray cluster joined
    (`splice.scale.cluster.connect`).

    Args:
        captions (`str` or `os.PathLike`): a `.txt`, `.jsonl` (`{"caption", "group"?}`) or `.parquet` corpus.
        embedder (`str`): a CLIP-style checkpoint ([`Embedder.from_pretrained`]), loaded once per worker.
        directory (`str` or `os.PathLike`): where to write the datastore.
        workers (`int`, *optional*, defaults to 2): embedding actors.
        batch_size (`int`, *optional*, defaults to 64): captions per embedder call.
        index, keep_vectors, flat_limit, progress: as in `splice.retrieval.write_datastore`.

    Returns:
        `dict`: the datastore's `datastore.json`.
    """
    ray = import_ray()
    captions = Path(captions)
    if not captions.is_file():
        raise FileNotFoundError(f"captions {str(captions)!r}: no such file")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # key i is caption i of the corpus, as in one process
    embedded = _read(captions).map_batches(
        _EmbedCaptions,
        fn_constructor_args=(embedder, batch_size),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
    )
    # The identity is saved with the datastore (and checked at query time): the driver reads it from the checkpoint.
    identity = Embedder.from_pretrained(embedder, device="cpu").identity
    return write_datastore(_rows(embedded, batch_size), identity, directory, index, keep_vectors, flat_limit, progress)


def _rows(dataset: Any, batch_size: int) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
    """The embedded rows, in corpus order, as `(captions, groups, keys)` batches."""
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield list(batch["caption"]), list(batch["group"]), np.stack(batch["vector"])
