"""`splice eval MODEL DATA`: print a trained model's metrics on a data source."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice eval`."""
    from ..training.config import TASKS
    from ._inputs import at_least_one

    parser.add_argument("model")
    parser.add_argument("data", help="builtin:shapes, builtin:ocr, an image folder, a .json or .jsonl file")
    parser.add_argument("--task", choices=TASKS, default=None)
    parser.add_argument("--n", type=at_least_one, default=200, help="scenes to generate for built-in data")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--batch-size", type=at_least_one, default=32)


def run(args: argparse.Namespace) -> None:
    """Evaluate (SmallCap: with prompts from the datastore saved with the model, if any) and print the metrics."""
    from transformers import AutoModel, AutoTokenizer

    from ..training.config import check_data, coerce_number, loading
    from ..training.pipeline import evaluate, load_records
    from ..training.smallcap import DATASTORE_DIR
    from ._inputs import load_model_and_processor

    task = check_data(args.data, args.task)  # the data source and the task, as `splice train` checks them
    coerce_number("seed", args.seed)  # the range `splice train` accepts
    # After `import splice`, AutoModel gives the splice class of the checkpoint.
    model, processor = load_model_and_processor(args.model, AutoModel, with_processor=task != "text")
    if task == "text":
        with loading("model", args.model, "tokenizer"):
            tokenizer, image_processor = AutoTokenizer.from_pretrained(args.model), None
    else:
        tokenizer, image_processor = processor.tokenizer, processor.image_processor
    records = load_records(args.data, task, args.n, args.seed, None)
    datastore_dir = Path(args.model) / DATASTORE_DIR
    if hasattr(model, "prompts"):  # SmallCap: retrieval prompts from the datastore saved with the model, if any
        retrieved = [[] for _ in records]
        if datastore_dir.is_dir():
            from ..retrieval import load_datastore_for

            datastore = load_datastore_for(datastore_dir, model, image_processor)
            retrieved = datastore.retrieve_for_images([r["image"] for r in records], k=model.config.retrieval_k)
        records = [r | {"retrieved": c} for r, c in zip(records, retrieved)]
    metrics = evaluate(model, records, tokenizer, image_processor, task, args.batch_size)
    print(json.dumps(metrics, indent=2))
