"""Retrieval-augmented captioning (SmallCap-style): a datastore of captions searched with image embeddings.

A CLIP-style dual encoder ([`Embedder`]) embeds the captions of a corpus into a [`Datastore`] (an exact inner-product
FAISS index over L2-normalised vectors, so scores are cosine similarities); an image is embedded with the image tower
and the captions nearest to it are retrieved, e.g. to prompt a captioner. In training, the query image's own captions
are excluded (`exclude_groups`), so the model learns to use related captions rather than copy the answer. Swapping the
datastore at inference transfers a captioner to a new domain without training.

Files written by [`Datastore.save`]: `index.faiss`, `captions.jsonl` (one `{"caption", "group"}` per key, in index
order) and `datastore.json` (embedder identity, kind of keys, dimension, count, splice version).

FAISS is imported on first use, so `splice` (and its command line) works without it: `pip install faiss-cpu`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import open_image

if TYPE_CHECKING:
    import faiss

INDEX_NAME = "index.faiss"
CAPTIONS_NAME = "captions.jsonl"
META_NAME = "datastore.json"
KEY_KINDS = ("text", "image")

TextFn = Callable[[list[str]], Any]
ImageFn = Callable[[list[Image.Image]], Any]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as error:
        raise ImportError("splice.retrieval needs FAISS: `pip install faiss-cpu` (or faiss-gpu).") from error
    return faiss


def _normalised(vectors: Any) -> np.ndarray:
    """float32 C-contiguous rows of unit length (zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32)  # a copy, so the caller's array is never modified
    if vectors.ndim != 2:
        raise ValueError(f"Expected embeddings of shape [N, D], got shape {vectors.shape}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [N, 1]
    return vectors / np.maximum(norms, 1e-12)


class Embedder:
    r"""
    Embeds texts and images into one space, as L2-normalised float32 arrays `[N, D]`.

    Build it from a CLIP-style checkpoint with [`Embedder.from_pretrained`], or from your own functions with
    [`Embedder.from_functions`]. Its `identity` is saved with a datastore, so a datastore is never queried with
    embeddings from another space.

    Args:
        text_fn (`Callable[[list[str]], array]`): embeds a batch of texts, `[B, D]`.
        image_fn (`Callable[[list[PIL.Image.Image]], array]`, *optional*): embeds a batch of RGB images, `[B, D]`.
        identity (`dict`): JSON-serialisable description of the embedding space.
    """

    def __init__(self, text_fn: TextFn, image_fn: ImageFn | None, identity: dict[str, Any]):
        self.text_fn = text_fn
        self.image_fn = image_fn
        self.identity = json.loads(json.dumps(identity))  # as it will read back from datastore.json

    @classmethod
    def from_functions(cls, text_fn: TextFn, image_fn: ImageFn | None, identity: dict[str, Any]) -> Embedder:
        r"""
        An embedder from user functions (outputs are L2-normalised for you).

        Args:
            text_fn (`Callable[[list[str]], array]`): embeds a batch of texts, `[B, D]` (numpy array, CPU tensor or
                nested lists).
            image_fn (`Callable[[list[PIL.Image.Image]], array]` or `None`): embeds a batch of RGB images, `[B, D]`;
                `None` for a text-only embedder.
            identity (`dict`): names the embedding space, e.g. `{"name_or_path": "my-encoder-v2", "class": "mine",
                "dim": 512}`; a datastore built with it loads only with an embedder of equal identity.

        Returns:
            [`Embedder`]
        """
        return cls(text_fn, image_fn, identity)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None) -> Embedder:
        r"""
        A CLIP-style dual encoder: a checkpoint whose model has `get_text_features` and `get_image_features`
        (`CLIPModel`, `SiglipModel`, ...), with its tokenizer and image processor.

        Args:
            name_or_path (`str`): hub id or local directory (local paths are made absolute in the identity).
            device (`str`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.

        Returns:
            [`Embedder`]: identity `{"name_or_path", "class", "dim"}`.
        """
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModel.from_pretrained(name_or_path).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
        # SigLIP was trained on texts padded to the full length (its pooled output is the last position).
        padding = "max_length" if model.config.model_type.startswith("siglip") else True

        def pooled(output: Any) -> np.ndarray:
            # transformers >= 5.x returns a model output whose pooler_output is the projected embedding.
            features = output if isinstance(output, torch.Tensor) else output.pooler_output  # [B, D]
            return features.float().cpu().numpy()

        @torch.no_grad()
        def text_fn(texts: list[str]) -> np.ndarray:
            inputs = tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
            return pooled(model.get_text_features(**inputs.to(device)))

        @torch.no_grad()
        def image_fn(images: list[Image.Image]) -> np.ndarray:
            inputs = image_processor(images=images, return_tensors="pt").to(device)
            return pooled(model.get_image_features(**inputs))

        if os.path.isdir(name_or_path):
            name_or_path = os.path.abspath(name_or_path)
        dim = text_fn(["a"]).shape[1]
        return cls(text_fn, image_fn, {"name_or_path": name_or_path, "class": type(model).__name__, "dim": dim})

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        r"""
        Args:
            texts (`Sequence[str]`): the texts.
            batch_size (`int`, *optional*, defaults to 64): texts per call of the text tower.

        Returns:
            `np.ndarray`: float32 `[N, D]`, rows of unit length.
        """
        texts = list(texts)
        return self._embed(self.text_fn, texts, batch_size, "Embedding texts", list)

    def embed_images(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        r"""
        Args:
            images (`Sequence`): PIL images or anything [`splice.data.open_image`] reads (paths, bytes); files are
                opened one batch at a time.
            batch_size (`int`, *optional*, defaults to 32): images per call of the image tower.

        Returns:
            `np.ndarray`: float32 `[N, D]`, rows of unit length.
        """
        if self.image_fn is None:
            raise ValueError(f"The embedder {self.identity} has no image function.")
        images = list(images)
        return self._embed(self.image_fn, images, batch_size, "Embedding images", lambda b: [open_image(i) for i in b])

    def _embed(self, fn: Callable, items: list, batch_size: int, desc: str, prepare: Callable) -> np.ndarray:
        chunks = [
            _normalised(fn(prepare(items[start : start + batch_size])))  # [B, D]
            for start in tqdm(range(0, len(items), batch_size), desc=desc, leave=False)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.identity.get("dim", 0)), np.float32)


class Datastore:
    r"""
    Captions behind an exact inner-product FAISS index (`faiss.IndexFlatIP`) over L2-normalised keys.

    Each key has its caption and an optional group id (e.g. the id of the image the caption describes), used to exclude
    the query image's own captions in training. Keys are text embeddings of the captions (`keys="text"`, SmallCap's
    default) or embeddings of images, each stored with one of its captions (`keys="image"`: the captions of the nearest
    images are retrieved).

    Args:
        index (`faiss.Index`): one vector per caption, in order.
        captions (`list[str]`): the captions.
        groups (`list[str | None]`): the group of each caption.
        keys (`str`): `"text"` or `"image"`.
        identity (`dict`): identity of the embedder that made the keys.
        embedder ([`Embedder`], *optional*): embeds query images in [`Datastore.retrieve_for_images`].
    """

    def __init__(
        self,
        index: faiss.Index,
        captions: list[str],
        groups: list[str | None],
        keys: str,
        identity: dict[str, Any],
        embedder: Embedder | None = None,
    ):
        if not index.ntotal == len(captions) == len(groups):
            raise ValueError(
                f"{index.ntotal} keys, {len(captions)} captions and {len(groups)} groups differ in number."
            )
        if keys not in KEY_KINDS:
            raise ValueError(f"keys must be one of {KEY_KINDS}, got {keys!r}")
        self.index, self.captions, self.groups = index, captions, groups
        self.keys, self.identity, self.embedder = keys, identity, embedder
        # With exclusion, fetching k + the largest group's size always leaves k hits from other groups.
        self.max_group_size = max(Counter(g for g in groups if g is not None).values(), default=0)

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
        keys: str = "text",
        images: Sequence[Any] | None = None,
        batch_size: int = 64,
    ) -> Datastore:
        r"""
        Embed the keys and index them.

        Args:
            captions (`Sequence[str]`): the caption corpus.
            embedder ([`Embedder`]): embeds the keys (and later the queries).
            groups (`Sequence`, *optional*): one group id per caption (stored as `str`), e.g. its image's id.
            keys (`str`, *optional*, defaults to `"text"`): `"text"` embeds the captions; `"image"` embeds `images`.
            images (`Sequence`, *optional*): with `keys="image"`, the image of each caption (repeat an image for each of
                its captions: repeated paths or objects are embedded once).
            batch_size (`int`, *optional*, defaults to 64): items per embedder call.

        Returns:
            [`Datastore`]
        """
        captions = list(captions)
        if not captions:
            raise ValueError("Cannot build a datastore from no captions.")
        groups = _group_ids(groups, len(captions))
        if keys == "text":
            vectors = embedder.embed_texts(captions, batch_size)  # [N, D]
        elif keys == "image":
            if images is None or len(images) != len(captions):
                raise ValueError("keys='image' needs `images`, one per caption.")
            unique: dict[Any, int] = {}
            rows = [unique.setdefault(_image_key(image), len(unique)) for image in images]  # [N]
            distinct = {row: image for row, image in zip(rows, images)}  # row -> one of its (identical) images
            vectors = embedder.embed_images([distinct[row] for row in range(len(unique))], batch_size)[rows]  # [N, D]
        else:
            raise ValueError(f"keys must be one of {KEY_KINDS}, got {keys!r}")
        index = _faiss().IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index, captions, groups, keys, embedder.identity, embedder)

    def save(self, directory: str | os.PathLike) -> None:
        r"""
        Write `index.faiss`, `captions.jsonl` and `datastore.json` to `directory` (created if needed).

        Args:
            directory (`str` or `os.PathLike`): where to save.
        """
        from . import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(directory / INDEX_NAME))
        with open(directory / CAPTIONS_NAME, "w", encoding="utf-8") as file:
            for caption, group in zip(self.captions, self.groups):
                file.write(json.dumps({"caption": caption, "group": group}) + "\n")
        meta = {
            "embedder": self.identity,
            "keys": self.keys,
            "dim": self.dim,
            "count": len(self),
            "splice_version": __version__,
        }
        (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike, embedder: Embedder | None = None) -> Datastore:
        r"""
        Load a saved datastore.

        Args:
            directory (`str` or `os.PathLike`): as written by [`Datastore.save`].
            embedder ([`Embedder`], *optional*): to embed queries; its identity must equal the saved one.

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
        index = _faiss().read_index(str(directory / INDEX_NAME))
        with open(directory / CAPTIONS_NAME, encoding="utf-8") as file:
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
        fetch = k + (self.max_group_size if exclude_groups is not None else 0)
        # Equal scores (e.g. the captions of one image under image keys) are ordered by key, and may continue past the
        # fetched hits; scores are compared at 1e-5, so BLAS rounding in batched queries cannot reorder them.
        while pending.size:
            fetch = min(fetch, len(self))
            scores, ids = self.index.search(queries[pending], fetch)  # [P, fetch] each
            scores = scores.round(5)
            short = []
            for query, row_scores, row_ids in zip(pending, scores, ids):
                order = np.lexsort((row_ids, -row_scores))  # nearest first, then by key
                results[query], last = self._captions(row_scores[order], row_ids[order], k, exclude[query])
                # Fetch more when exclusions or duplicates left fewer than k, or the k-th may tie with unfetched keys.
                if fetch < len(self) and (len(results[query]) < k or last == row_scores.min()):
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

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the embedder identity, kind of keys, every key vector, caption and group."""
        digest = hashlib.sha256(json.dumps([self.identity, self.keys, self.captions, self.groups]).encode())
        digest.update(_faiss().vector_to_array(self.index.codes).tobytes())  # raw bytes of the [N, D] keys
        return digest.hexdigest()


def _group_ids(groups: Sequence[Any] | None, count: int) -> list[str | None]:
    """Group ids as strings (JSON keeps them so: an int id saved and loaded back still matches), `None` for none."""
    if groups is None:
        return [None] * count
    if len(groups) != count:
        raise ValueError(f"Expected {count} group ids, got {len(groups)}.")
    return [None if g is None else str(g) for g in groups]


def _image_key(image: Any) -> Any:
    return os.fspath(image) if isinstance(image, str | os.PathLike) else id(image)


FROZEN_ENCODER_EMBEDDER = "splice:frozen-encoder-mean"


def frozen_encoder_embedder(encoder: Any, image_processor: Any) -> Embedder:
    r"""
    Image keys from a captioner's own frozen encoder (the mean of its token states): retrieval without a CLIP model.

    Args:
        encoder: the frozen vision encoder.
        image_processor: its image processor.
    """

    @torch.no_grad()
    def embed(images: list) -> torch.Tensor:
        pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(encoder.device)
        states = encoder(pixel_values=pixels).last_hidden_state  # [B, S, E] or [B, E, H, W]
        return (states.mean(1) if states.dim() == 3 else states.mean((2, 3))).float().cpu()

    return Embedder.from_functions(None, embed, {"name_or_path": FROZEN_ENCODER_EMBEDDER})


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
    The contents of a saved datastore's `datastore.json` (embedder identity, keys, dim, count, splice version).

    Args:
        directory (`str` or `os.PathLike`): a directory written by [`Datastore.save`].

    Returns:
        `dict`
    """
    path = Path(directory) / META_NAME
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a datastore (no {META_NAME}).")
    return json.loads(path.read_text())


def retrieve_cached(
    datastore: Datastore,
    images: Sequence[Any],
    keys: Sequence[str],
    k: int = 4,
    exclude_groups: Sequence[Any] | None = None,
    cache_path: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> list[list[str]]:
    r"""
    [`Datastore.retrieve_for_images`], computed once per image and datastore and kept in a JSON file, so later epochs
    and runs reuse the retrieved captions without embedding the images again.

    Entries are stored under the datastore's fingerprint and `k`, then the image key; each remembers its excluded
    group, and an entry asked for with another exclusion is recomputed. The file is replaced atomically.

    Args:
        datastore ([`Datastore`]): with an embedder.
        images (`Sequence`): PIL images or paths; only the images missing from the cache are opened.
        keys (`Sequence[str]`): a stable, unique key per image (e.g. its file name or dataset id).
        k (`int`, *optional*, defaults to 4): captions per image.
        exclude_groups (`Sequence`, *optional*): one group id (or `None`) per image.
        cache_path (`str` or `os.PathLike`, *optional*): the JSON file; without it nothing is cached.
        batch_size (`int`, *optional*, defaults to 32): images per embedder call.

    Returns:
        `list[list[str]]`: the captions of each image, in order.
    """
    if len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images.")
    exclude = _group_ids(exclude_groups, len(keys))
    if cache_path is None:
        return datastore.retrieve_for_images(images, k, exclude, batch_size)
    path = Path(cache_path)
    cache = json.loads(path.read_text()) if path.exists() else {}
    entries = cache.setdefault(f"{datastore.fingerprint}/k={k}", {})
    missing = [i for i, key in enumerate(keys) if key not in entries or entries[key]["exclude"] != exclude[i]]
    if missing:
        found = datastore.retrieve_for_images(
            [images[i] for i in missing], k, [exclude[i] for i in missing], batch_size
        )
        for i, captions in zip(missing, found):
            entries[keys[i]] = {"exclude": exclude[i], "captions": captions}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # per process, so writers never interleave
        partial.write_text(json.dumps(cache))
        os.replace(partial, path)
    return [entries[key]["captions"] for key in keys]


# --- command line --------------------------------------------------------------------------------------------------


def add_datastore_parser(subparsers: argparse._SubParsersAction) -> None:
    r"""
    Register `datastore build` and `datastore query` on the `splice` command's subparsers; each sets `args.func`.

    Args:
        subparsers (`argparse._SubParsersAction`): from `parser.add_subparsers()`.
    """
    datastore = subparsers.add_parser("datastore", help="build or query a caption datastore for retrieval")
    actions = datastore.add_subparsers(dest="datastore_command", required=True)

    build = actions.add_parser("build", help="embed a caption corpus into a datastore")
    build.add_argument(
        "--captions",
        required=True,
        help='.jsonl of {"caption", "group"?, "image"?}, .txt with one caption per line, or builtin:shapes[:domain]',
    )
    build.add_argument("--embedder", required=True, help="CLIP-style checkpoint: hub id or directory")
    build.add_argument("--keys", choices=KEY_KINDS, default="text", help="embed the captions or their images")
    build.add_argument("--output", required=True, help="directory to save the datastore in")
    build.add_argument("--n", type=int, default=1000, help="examples to generate for builtin captions")
    build.add_argument("--seed", type=int, default=0, help="seed of builtin captions")
    build.add_argument("--batch-size", type=int, default=64)
    build.set_defaults(func=datastore_build_command)

    query = actions.add_parser("query", help="print the captions retrieved for images, as JSONL")
    query.add_argument("datastore", help="a directory saved by `datastore build`")
    query.add_argument("images", nargs="+", help="image files, folders or globs")
    query.add_argument("--k", type=int, default=4)
    query.add_argument("--embedder", default=None, help="default: the checkpoint the datastore was built with")
    query.add_argument("--batch-size", type=int, default=32)
    query.set_defaults(func=datastore_query_command)


def _read_captions(source: str, n: int, seed: int) -> tuple[list[str], list[str | None], list[Any] | None]:
    """Captions, groups and images (or `None`) of a `--captions` source."""
    if source.startswith("builtin:"):
        from .builtin_data import make_dataset

        task, _, domain = source.removeprefix("builtin:").partition(":")
        if task != "shapes":
            raise SystemExit(f"splice datastore: builtin captions are builtin:shapes[:domain], got {source!r}")
        examples = make_dataset("shapes", n, seed=seed, domain=domain or "a")
        rows = [(ref, str(i), example.image) for i, example in enumerate(examples) for ref in example.references]
        captions, groups, images = (list(column) for column in zip(*rows))
        return captions, groups, images
    path = Path(source)
    if path.suffix == ".txt":
        captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return captions, [None] * len(captions), None
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        # Image paths are relative to the file, so a corpus folder can be moved as a whole.
        images = [path.parent / r["image"] for r in rows] if all("image" in r for r in rows) else None
        return [r["caption"] for r in rows], [r.get("group") for r in rows], images
    raise SystemExit(f"splice datastore: --captions must be .jsonl, .txt or builtin:shapes[:domain], got {source!r}")


def datastore_build_command(args: argparse.Namespace) -> None:
    r"""`splice datastore build`: embed `--captions` with `--embedder` and save to `--output`; prints a JSON summary."""
    captions, groups, images = _read_captions(args.captions, args.n, args.seed)
    if args.keys == "image" and images is None:
        raise SystemExit('splice datastore build: --keys image needs an "image" on every line of the .jsonl')
    embedder = Embedder.from_pretrained(args.embedder)
    datastore = Datastore.build(captions, embedder, groups, args.keys, images, args.batch_size)
    datastore.save(args.output)
    print(json.dumps({"output": args.output, "count": len(datastore), "dim": datastore.dim, "keys": args.keys}))


def datastore_query_command(args: argparse.Namespace) -> None:
    r"""`splice datastore query`: print one JSON line `{"file", "captions"}` per image."""
    from .cli import _expand_inputs

    name = args.embedder or read_datastore_meta(args.datastore)["embedder"].get("name_or_path")
    if name == FROZEN_ENCODER_EMBEDDER:
        raise SystemExit(
            "splice datastore query: this datastore's keys come from a captioner's frozen encoder; query it with "
            "`splice caption MODEL IMAGES --datastore DIR`, or build one with a CLIP checkpoint (--embedder)."
        )
    datastore = Datastore.load(args.datastore, Embedder.from_pretrained(name))
    paths = _expand_inputs(args.images)
    for path, captions in zip(paths, datastore.retrieve_for_images(paths, args.k, batch_size=args.batch_size)):
        sys.stdout.write(json.dumps({"file": str(path), "captions": captions}) + "\n")
