"""The datastore: captions behind an inner-product FAISS index over L2-normalised keys, saved and loaded as a
directory, with cached retrieval for training.

Two layouts, both loaded by [`Datastore.load`]:

- written by [`Datastore.save`] (built in memory, exact): `index.faiss` (flat), `captions.jsonl` (one
  `{"caption", "group"}` per key, in index order) and `datastore.json` (embedder identity, kind of keys, dimension,
  count, splice version); loaded into memory.
- written by [`build_datastore`] / `splice datastore build` (streamed, any size): the same files, plus
  `captions.offsets` (line offsets), `index.ivfdata` (an IVF index's on-disk lists) and, in `datastore.json`, the
  index's factory string (`"index"`), `nprobe`, `max_group_size` and `fingerprint`; loaded memory-mapped, so memory
  does not grow with the datastore.

Names: a *key* is a vector in the index (one per caption); `key_kind` says what was embedded to make the keys
(`"text"`: the captions, `"image"`: their images; saved as `"keys"` in `datastore.json`). `image_ids` in
[`retrieve_cached`] are something else: the cache's name for each query image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._version import __version__
from .embedder import FROZEN_ENCODER_EMBEDDER, Embedder, _normalised, frozen_encoder_embedder
from .index import INDEX_NAME, _faiss, read_index
from .store import CaptionFile

if TYPE_CHECKING:
    import faiss

CAPTIONS_NAME = "captions.jsonl"
META_NAME = "datastore.json"
KEY_KINDS = ("text", "image")


class Datastore:
    r"""
    Captions behind an inner-product FAISS index over L2-normalised keys: exact (`faiss.IndexFlatIP`) when built in
    memory ([`Datastore.build`]), chosen by size when built on disk ([`build_datastore`]).

    Each key has its caption and an optional group id (e.g. the id of the image the caption describes), used to exclude
    the query image's own captions in training. Keys are text embeddings of the captions (`key_kind="text"`, SmallCap's
    default) or embeddings of images, each stored with one of its captions (`key_kind="image"`: the captions of the
    nearest images are retrieved).

    Args:
        index (`faiss.Index`): one vector per caption, in order.
        captions (`Sequence[str]`): the captions (a list, or read from disk).
        groups (`Sequence[str | None]`): the group of each caption.
        key_kind (`str`): what the keys embed: `"text"` or `"image"`.
        identity (`dict`): identity of the embedder that made the keys.
        embedder ([`Embedder`], *optional*): embeds query images in [`Datastore.retrieve_for_images`].
        max_group_size (`int`, *optional*): the size of the largest group (default: counted from `groups`).
        directory (`Path`, *optional*): the directory the datastore was loaded from, when its files stay on disk.
        fingerprint (`str`, *optional*): [`Datastore.fingerprint`], when known (default: computed on first use).
    """

    def __init__(
        self,
        index: faiss.Index,
        captions: Sequence[str],
        groups: Sequence[str | None],
        key_kind: str,
        identity: dict[str, Any],
        embedder: Embedder | None = None,
        max_group_size: int | None = None,
        directory: Path | None = None,
        fingerprint: str | None = None,
    ):
        if not index.ntotal == len(captions) == len(groups):
            raise ValueError(
                f"{index.ntotal} keys, {len(captions)} captions and {len(groups)} groups differ in number."
            )
        if key_kind not in KEY_KINDS:
            raise ValueError(f"key_kind must be one of {KEY_KINDS}, got {key_kind!r}")
        self.index, self.captions, self.groups = index, captions, groups
        self.key_kind, self.identity, self.embedder = key_kind, identity, embedder
        self.directory = directory
        self._fingerprint = fingerprint
        # With exclusion, fetching k + the largest group's size always leaves k hits from other groups.
        if max_group_size is None:
            max_group_size = max(Counter(g for g in groups if g is not None).values(), default=0)
        self.max_group_size = max_group_size

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def dim(self) -> int:
        return self.index.d

    @classmethod
    def build(
        cls,
        captions: Sequence[str],
        embedder: Embedder,
        groups: Sequence[Any] | None = None,
        key_kind: str = "text",
        images: Sequence[Any] | None = None,
        batch_size: int = 64,
    ) -> Datastore:
        r"""
        Embed the keys and index them.

        Args:
            captions (`Sequence[str]`): the caption corpus.
            embedder ([`Embedder`]): embeds the keys (and later the queries).
            groups (`Sequence`, *optional*): one group id per caption (stored as `str`), e.g. its image's id.
            key_kind (`str`, *optional*, defaults to `"text"`): `"text"` embeds the captions; `"image"` embeds `images`.
            images (`Sequence`, *optional*): with `key_kind="image"`, the image of each caption (repeat an image for
                each of its captions: repeated paths or objects are embedded once).
            batch_size (`int`, *optional*, defaults to 64): items per embedder call.

        Returns:
            [`Datastore`]
        """
        captions = list(captions)
        if not captions:
            raise ValueError("Cannot build a datastore from no captions.")
        groups = _group_ids(groups, len(captions))
        if key_kind == "text":
            vectors = embedder.embed_texts(captions, batch_size)  # [N, D]
        elif key_kind == "image":
            if images is None or len(images) != len(captions):
                raise ValueError("key_kind='image' needs `images`, one per caption.")
            unique: dict[Any, int] = {}
            rows = [unique.setdefault(_same_image(image), len(unique)) for image in images]  # [N]
            distinct = {row: image for row, image in zip(rows, images)}  # row -> one of its (identical) images
            vectors = embedder.embed_images([distinct[row] for row in range(len(unique))], batch_size)[rows]  # [N, D]
        else:
            raise ValueError(f"key_kind must be one of {KEY_KINDS}, got {key_kind!r}")
        index = _faiss().IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index, captions, groups, key_kind, embedder.identity, embedder)

    def save(self, directory: str | os.PathLike) -> None:
        r"""
        Write `index.faiss`, `captions.jsonl` and `datastore.json` to `directory` (created if needed); a datastore
        loaded from an on-disk build is saved by copying its files.

        Args:
            directory (`str` or `os.PathLike`): where to save.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.directory is not None:
            if directory.resolve() != self.directory.resolve():
                for source in sorted(self.directory.iterdir()):
                    if source.is_file():
                        shutil.copyfile(source, directory / source.name)
            return
        _faiss().write_index(self.index, str(directory / INDEX_NAME))
        with open(directory / CAPTIONS_NAME, "w", encoding="utf-8") as file:
            for caption, group in zip(self.captions, self.groups):
                file.write(json.dumps({"caption": caption, "group": group}) + "\n")
        meta = {
            "embedder": self.identity,
            "keys": self.key_kind,
            "dim": self.dim,
            "count": len(self),
            "splice_version": __version__,
        }
        (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(
        cls, directory: str | os.PathLike, embedder: Embedder | None = None, nprobe: int | None = None
    ) -> Datastore:
        r"""
        Load a saved datastore.

        Args:
            directory (`str` or `os.PathLike`): as written by [`Datastore.save`] or [`build_datastore`].
            embedder ([`Embedder`], *optional*): to embed queries; its identity must equal the saved one.
            nprobe (`int`, *optional*): lists an IVF index searches per query (default: the one saved; more lists
                find more of the exact nearest keys, and take longer).

        Returns:
            [`Datastore`]
        """
        directory = Path(directory)
        meta = read_datastore_meta(directory)
        if embedder is not None and embedder.identity != meta["embedder"]:
            raise ValueError(
                f"The datastore at {directory} was built with the embedder {meta['embedder']}, but the given embedder "
                f"is {embedder.identity}; its keys live in another embedding space."
            )
        if "index" in meta:  # an on-disk build: everything stays mapped from the files
            index = read_index(directory, meta["index"], nprobe)
            file = CaptionFile(directory / CAPTIONS_NAME, meta["count"])
            if index.ntotal != meta["count"]:
                raise ValueError(
                    f"datastore file {str(directory / INDEX_NAME)!r} holds {index.ntotal} keys, {META_NAME} says "
                    f"{meta['count']}: the files come from different builds; rebuild with `splice datastore build`"
                )
            return cls(
                index,
                file.captions,
                file.groups,
                meta["keys"],
                meta["embedder"],
                embedder,
                meta["max_group_size"],
                directory,
                meta["fingerprint"],
            )
        index = read_index(directory)
        captions_path = directory / CAPTIONS_NAME
        if not captions_path.is_file():
            raise FileNotFoundError(
                f"datastore file {str(captions_path)!r} is missing; copy the whole datastore directory, or rebuild it"
            )
        with open(captions_path, encoding="utf-8") as file:
            rows = [json.loads(line) for line in file if line.strip()]
        return cls(
            index, [r["caption"] for r in rows], [r["group"] for r in rows], meta["keys"], meta["embedder"], embedder
        )

    def search(self, queries: Any, k: int = 4, exclude_groups: Sequence[Any] | None = None) -> list[list[str]]:
        r"""
        The captions of the `k` nearest keys of each query, nearest first, identical captions kept once.

        Args:
            queries (array `[Q, D]`): query embeddings (normalised here, so raw embeddings are fine).
            k (`int`, *optional*, defaults to 4): captions per query; fewer when the datastore has fewer to give.
            exclude_groups (`Sequence`, *optional*): one group id (or `None`) per query; captions of that group are
                never returned for that query (e.g. the query image's own captions during training).

        Returns:
            `list[list[str]]`: `Q` lists of at most `k` captions.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = _normalised(queries)  # [Q, D]
        if queries.shape[1] != self.dim:
            raise ValueError(f"Queries have dimension {queries.shape[1]}, the datastore {self.dim}.")
        exclude = _group_ids(exclude_groups, len(queries))

        results: list[list[str]] = [[] for _ in queries]
        pending = np.arange(len(queries))
        # One past k, so that the k-th hit is known not to tie with an unfetched key without a second search.
        fetch = k + 1 + (self.max_group_size if exclude_groups is not None else 0)
        # Equal scores (e.g. the captions of one image under image keys) are ordered by key, and may continue past the
        # fetched hits; scores are compared at 1e-5, so BLAS rounding in batched queries cannot reorder them.
        while pending.size:
            fetch = min(fetch, len(self))
            scores, ids = self.index.search(queries[pending], fetch)  # [P, fetch] each
            scores = scores.round(5)
            short = []
            for query, row_scores, row_ids in zip(pending, scores, ids):
                found = row_ids >= 0  # an IVF index returns -1 past the keys in the lists it searched
                exhausted = not found.all()
                row_scores, row_ids = row_scores[found], row_ids[found]
                order = np.lexsort((row_ids, -row_scores))  # nearest first, then by key
                results[query], last = self._captions(row_scores[order], row_ids[order], k, exclude[query])
                # Fetch more when exclusions or duplicates left fewer than k, or the k-th may tie with unfetched keys.
                if fetch < len(self) and not exhausted and (len(results[query]) < k or last == row_scores.min()):
                    short.append(query)
            pending, fetch = np.array(short, dtype=np.int64), fetch * 2
        return results

    def _captions(self, scores: np.ndarray, ids: np.ndarray, k: int, exclude: str | None) -> tuple[list[str], float]:
        """Up to `k` distinct captions outside the group `exclude`, and the score of the last one taken."""
        hits: list[str] = []
        last = np.inf
        for score, i in zip(scores, ids):
            if len(hits) == k:
                break
            if (exclude is None or self.groups[i] != exclude) and self.captions[i] not in hits:
                hits.append(self.captions[i])
                last = score
        return hits, last

    def retrieve_for_images(
        self, images: Sequence[Any], k: int = 4, exclude_groups: Sequence[Any] | None = None, batch_size: int = 32
    ) -> list[list[str]]:
        r"""
        Embed images with the datastore's embedder and [`Datastore.search`] with them.

        Args:
            images (`Sequence`): PIL images or paths.
            k (`int`, *optional*, defaults to 4): captions per image.
            exclude_groups (`Sequence`, *optional*): one group id (or `None`) per image.
            batch_size (`int`, *optional*, defaults to 32): images per embedder call.

        Returns:
            `list[list[str]]`
        """
        if self.embedder is None:
            raise ValueError("This datastore has no embedder: load it with `Datastore.load(directory, embedder=...)`.")
        if not len(images):
            return []
        return self.search(self.embedder.embed_images(images, batch_size), k, exclude_groups)

    @property
    def fingerprint(self) -> str:
        """sha256 of the embedder identity, kind of keys, every key vector, caption and group."""
        if self._fingerprint is None:
            captions, groups = list(self.captions), list(self.groups)
            digest = hashlib.sha256(json.dumps([self.identity, self.key_kind, captions, groups]).encode())
            digest.update(_faiss().vector_to_array(self.index.codes).tobytes())  # raw bytes of the [N, D] keys
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def _group_ids(groups: Sequence[Any] | None, count: int) -> list[str | None]:
    """Group ids as strings (JSON keeps them so: an int id saved and loaded back still matches), `None` for none."""
    if groups is None:
        return [None] * count
    if len(groups) != count:
        raise ValueError(f"Expected {count} group ids, got {len(groups)}.")
    return [None if g is None else str(g) for g in groups]


def _same_image(image: Any) -> Any:
    """Equal for the same path or the same image object: repeated images are embedded once."""
    return os.fspath(image) if isinstance(image, str | os.PathLike) else id(image)


def load_datastore_for(directory: str | os.PathLike, model: Any = None, image_processor: Any = None) -> Datastore:
    r"""
    Load a datastore with the embedder it was built with: a captioner's frozen encoder (pass `model` and its
    `image_processor`) or the checkpoint its metadata names.

    Args:
        directory: the datastore directory.
        model (*optional*): the captioner, when the datastore's keys come from its encoder.
        image_processor (*optional*): the captioner's image processor.
    """
    name = read_datastore_meta(directory)["embedder"]["name_or_path"]
    if name == FROZEN_ENCODER_EMBEDDER:
        if model is None or image_processor is None:
            raise ValueError(
                f"The datastore at {directory} uses the captioner's encoder: pass `model` and its processor."
            )
        return Datastore.load(directory, frozen_encoder_embedder(model.encoder, image_processor))
    return Datastore.load(directory, Embedder.from_pretrained(name))


def read_datastore_meta(directory: str | os.PathLike) -> dict[str, Any]:
    r"""
    The contents of a saved datastore's `datastore.json` (embedder identity, `keys` (the key kind), dim, count, splice
    version).

    Args:
        directory (`str` or `os.PathLike`): a directory written by [`Datastore.save`].

    Returns:
        `dict`
    """
    path = Path(directory) / META_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} is not a datastore (no {META_NAME}): build one with `splice datastore build`, or finish an "
            "interrupted build by running it again"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"datastore file {str(path)!r} is not JSON ({error.msg}); the file is corrupt: rebuild with "
            "`splice datastore build`"
        ) from None


def retrieve_cached(
    datastore: Datastore,
    images: Sequence[Any],
    image_ids: Sequence[str],
    k: int = 4,
    exclude_groups: Sequence[Any] | None = None,
    cache_path: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> list[list[str]]:
    r"""
    [`Datastore.retrieve_for_images`], computed once per image and datastore and kept in a JSON file, so later epochs
    and runs reuse the retrieved captions without embedding the images again.

    Entries are stored under the datastore's fingerprint and `k`, then the image id; each remembers its excluded
    group, and an entry asked for with another exclusion is recomputed. The file is replaced atomically.

    Args:
        datastore ([`Datastore`]): with an embedder.
        images (`Sequence`): PIL images or paths; only the images missing from the cache are opened.
        image_ids (`Sequence[str]`): a stable, unique id per image, its entry in the cache (e.g. its file name, dataset
            id or a hash of its content).
        k (`int`, *optional*, defaults to 4): captions per image.
        exclude_groups (`Sequence`, *optional*): one group id (or `None`) per image.
        cache_path (`str` or `os.PathLike`, *optional*): the JSON file; without it nothing is cached.
        batch_size (`int`, *optional*, defaults to 32): images per embedder call.

    Returns:
        `list[list[str]]`: the captions of each image, in order.
    """
    if len(image_ids) != len(images):
        raise ValueError(f"{len(image_ids)} image ids for {len(images)} images.")
    exclude = _group_ids(exclude_groups, len(image_ids))
    if cache_path is None:
        return datastore.retrieve_for_images(images, k, exclude, batch_size)
    path = Path(cache_path)
    cache = json.loads(path.read_text()) if path.exists() else {}
    entries = cache.setdefault(f"{datastore.fingerprint}/k={k}", {})
    missing = [
        i
        for i, image_id in enumerate(image_ids)
        if image_id not in entries or entries[image_id]["exclude"] != exclude[i]
    ]
    if missing:
        found = datastore.retrieve_for_images(
            [images[i] for i in missing], k, [exclude[i] for i in missing], batch_size
        )
        for i, captions in zip(missing, found):
            entries[image_ids[i]] = {"exclude": exclude[i], "captions": captions}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # per process, so writers never interleave
        partial.write_text(json.dumps(cache))
        os.replace(partial, path)
    return [entries[image_id]["captions"] for image_id in image_ids]
