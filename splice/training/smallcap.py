"""The SmallCap preset's own training steps: its model class and fields, the retrieval prompts on every record, and the
datastore saved with the model (`splice train --preset smallcap`; the pipeline calls these, see `pipeline.train`).

A SmallCap run trains on records that carry the captions retrieved for their image (`"retrieved"`) and the prompt built
from them (`"prompt"`); the datastore they come from is saved next to the model, so `splice eval` and
`splice caption --datastore` retrieve the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import record_references
from ..models import SmallCapModel
from ..retrieval import Datastore, Embedder, frozen_encoder_embedder, retrieve_cached
from .config import TrainConfig, loading
from .feature_cache import content_key

MODEL_CLASS = SmallCapModel
DATASTORE_DIR = "datastore"
RETRIEVED_CACHE = "retrieved.json"


def model_fields(config: TrainConfig) -> dict[str, Any]:
    """The composite config fields the preset sets from the training config."""
    return {"retrieval_k": config.retrieval_k}


def add_retrieval_prompts(
    model: SmallCapModel, records: list[dict], eval_records: list[dict], config: TrainConfig, image_processor: Any
) -> tuple[list[dict], list[dict], Datastore | None]:
    r"""
    New records with the captions retrieved for each image (`"retrieved"`) and the prompt built from them (`"prompt"`).

    With the datastore built here from the training captions, a training image never sees its own captions (excluded
    by group); an external datastore (`config.datastore`) excludes them only where records carry the matching
    `"group"`. Retrieval runs once per image and datastore, cached in the output directory. The given records are not
    changed.

    Args:
        model (`SmallCapModel`): builds the prompts; its frozen encoder embeds the images for image keys.
        records, eval_records (`list[dict]`): the training and held-out records.
        config (`TrainConfig`): `retrieval_k`, `datastore`, `retrieval_embedder`, `output_dir`.
        image_processor: the model's image processor (for the frozen-encoder embedder).

    Returns:
        The prompted training and held-out records, and the datastore they were retrieved from (`None` when
        `retrieval_k` is 0: every prompt is the template without captions).
    """
    if config.retrieval_k == 0:
        unprompted = {"retrieved": [], "prompt": model.prompts(None, 1)[0]}
        return [r | unprompted for r in records], [r | unprompted for r in eval_records], None
    datastore, groups = build_datastore(model, records, config, image_processor)
    cache = Path(config.output_dir) / RETRIEVED_CACHE
    prompted = []
    for subset, exclude in ((records, groups), (eval_records, None)):
        images = [r["image"] for r in subset]
        ids = [content_key(image) for image in images]  # by content: a changed data set never reuses stale hits
        retrieved = retrieve_cached(datastore, images, ids, config.retrieval_k, exclude, cache)
        prompted.append([r | {"retrieved": c, "prompt": model.prompts([c], 1)[0]} for r, c in zip(subset, retrieved)])
    return prompted[0], prompted[1], datastore


def build_datastore(
    model: SmallCapModel, records: list[dict], config: TrainConfig, image_processor: Any
) -> tuple[Datastore, list[Any]]:
    r"""
    The datastore to retrieve from, and the group of each training record (its own captions' group, excluded).

    `config.datastore` is loaded; otherwise one is built from every reference caption of the training records: text
    keys embedded by `config.retrieval_embedder`, else image keys embedded by the model's frozen encoder.
    """
    if config.datastore is not None:
        return Datastore.load(config.datastore), [r.get("group") for r in records]
    groups = [str(i) for i in range(len(records))]
    captions = [caption for r in records for caption in record_references(r)]
    caption_groups = [group for r, group in zip(records, groups) for _ in record_references(r)]
    if config.retrieval_embedder is not None:
        with loading("retrieval_embedder", config.retrieval_embedder):
            embedder = Embedder.from_pretrained(config.retrieval_embedder)
        return Datastore.build(captions, embedder, caption_groups), groups
    images = [r["image"] for r in records for _ in record_references(r)]
    embedder = frozen_encoder_embedder(model.encoder, image_processor)
    return Datastore.build(captions, embedder, caption_groups, key_kind="image", images=images), groups


def save_datastore(datastore: Datastore, output_dir: str) -> None:
    """Save the datastore next to the model (`OUTPUT_DIR/datastore`), where `splice eval` looks for it."""
    datastore.save(Path(output_dir) / DATASTORE_DIR)
