"""Retrieval-augmented captioning (SmallCap-style): a datastore of captions searched with image embeddings.

A CLIP-style dual encoder ([`Embedder`]) embeds the captions of a corpus into a [`Datastore`] (an exact inner-product
FAISS index over L2-normalised vectors, so scores are cosine similarities); an image is embedded with the image tower
and the captions nearest to it are retrieved, e.g. to prompt a captioner. In training, the query image's own captions
are excluded (`exclude_groups`), so the model learns to use related captions rather than copy the answer. Swapping the
datastore at inference transfers a captioner to a new domain without training.

`embedder` holds the embedders, `datastore` the index and its files; the command line (`splice datastore build` /
`query`) is `splice.cli.datastore`.

FAISS is imported on first use, so `splice` (and its command line) works without it: `pip install faiss-cpu`.
"""

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

__all__ = [
    "CAPTIONS_NAME",
    "FROZEN_ENCODER_EMBEDDER",
    "INDEX_NAME",
    "KEY_KINDS",
    "META_NAME",
    "Datastore",
    "Embedder",
    "frozen_encoder_embedder",
    "load_datastore_for",
    "read_datastore_meta",
    "retrieve_cached",
]
