"""Retrieval-augmented captioning (SmallCap-style): a datastore of captions searched with image embeddings.

A CLIP-style dual encoder ([`Embedder`]) embeds the captions of a corpus into a [`Datastore`] (an exact inner-product
FAISS index over L2-normalised vectors, so scores are cosine similarities); an image is embedded with the image tower
and the captions nearest to it are retrieved, e.g. to prompt a captioner. In training, the query image's own captions
are excluded (`exclude_groups`), so the model learns to use related captions rather than copy the answer. Swapping the
datastore at inference transfers a captioner to a new domain without training.

`embedder` holds the embedders, `datastore` the datastore and its files, `index` the choice of FAISS index by size,
`store` the captions on disk, `sources` caption streams and `building` the build on disk from a stream of any length;
the command line (`splice datastore build` / `query`) is `splice.cli.datastore`.

FAISS is imported on first use, so `splice` (and its command line) works without it: `pip install faiss-cpu`.
"""

from .building import build_datastore, write_datastore
from .datastore import (
    CAPTIONS_NAME,
    INDEX_NAME,
    KEY_KINDS,
    META_NAME,
    Datastore,
    load_datastore_for,
    read_datastore_meta,
    retrieve_cached,
)
from .embedder import FROZEN_ENCODER_EMBEDDER, Embedder, frozen_encoder_embedder
from .index import FLAT_LIMIT, INDEX_KINDS, choose_index
from .sources import caption_batches

__all__ = [
    "CAPTIONS_NAME",
    "FLAT_LIMIT",
    "FROZEN_ENCODER_EMBEDDER",
    "INDEX_KINDS",
    "INDEX_NAME",
    "KEY_KINDS",
    "META_NAME",
    "Datastore",
    "Embedder",
    "build_datastore",
    "caption_batches",
    "choose_index",
    "frozen_encoder_embedder",
    "load_datastore_for",
    "read_datastore_meta",
    "retrieve_cached",
    "write_datastore",
]
