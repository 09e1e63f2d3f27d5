"""`splice eval MODEL DATA`: print a trained model's metrics on a data source."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# What `splice train` saves next to the model: the run's settings (the task among them) and its final metrics.
TRAIN_CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "eval_metrics.json"
DEFAULT_SEED = 12345


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice eval`, each with its help and default."""
    from ..training.config import TASKS
    from ._inputs import at_least_one

    parser.add_argument("model", help="a model directory saved by `splice train` or `splice demo` (or a hub id)")
    parser.add_argument("data", help="builtin:shapes, builtin:ocr, an image folder, a .json or .jsonl file")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=None,
        help="what to score: caption (BLEU-4, ROUGE-L, CIDEr, METEOR), ocr (CER, WER) or text (default: the task the "
        "data implies: ocr for builtin:ocr, text for .jsonl pairs, else caption)",
    )
    parser.add_argument("--n", type=at_least_one, default=200, help="items to generate for built-in data")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the generated built-in data (default: {DEFAULT_SEED}, scenes unlike those of training, seed 0, "
        "and of the held-out set `splice train` and `splice demo` report, seed 1: pass --seed 1 --n N_EVAL to score "
        "that set)",
    )
    parser.add_argument("--batch-size", type=at_least_one, default=32, help="items generated together")


def trained_task(model: str) -> str | None:
    """The task the model in directory `model` was trained for, from what `splice train` saved there (else `None`)."""
    import yaml

    folder = Path(model)
    try:
        task = (yaml.safe_load((folder / TRAIN_CONFIG_FILE).read_text(encoding="utf-8")) or {}).get("task")
        if isinstance(task, str):
            return task
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    try:  # saved before train_config.yaml: the metrics say the task
        metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "ocr" if "cer" in metrics else "caption" if "cider" in metrics or "bleu4" in metrics else None


def describe(args: argparse.Namespace, task: str, count: int) -> str:
    """What the printed numbers are: the model, the data, the task's metrics and how many items."""
    what = "CER, WER, exact match" if task == "ocr" else "BLEU-4, ROUGE-L, CIDEr, METEOR"
    source = f"{args.data} (generated, seed {args.seed})" if args.data.startswith("builtin:") else args.data
    return f"{task} metrics ({what}) of {args.model} on {source}, {count} items, each against all its references"


def check(args: argparse.Namespace) -> str:
    """The cheap checks (the data source, the task, the seed, the model path); the task to score."""
    from ..training.config import check_data, coerce_number, missing_path

    task = check_data(args.data, args.task)  # the data source and the task, as `splice train` checks them
    coerce_number("seed", args.seed)  # the range `splice train` accepts
    missing = missing_path("model", args.model, "the MODEL argument")
    if missing is not None:
        raise missing
    return task


def run(args: argparse.Namespace) -> None:
    """Evaluate (SmallCap: with prompts from the datastore saved with the model, if any) and print the metrics as JSON,
    after one stderr line saying what they are (and a warning when the task is not the one the model learned)."""
    task = check(args)
    learned = trained_task(args.model)
    if learned is not None and learned != task:
        print(
            f"splice eval: warning: {args.model} was trained for task {learned!r}, and {args.data} is scored as task "
            f"{task!r}; the numbers measure a task it did not learn (pass data of task {learned!r}, or --task)",
            file=sys.stderr,
        )
    from transformers import AutoModel, AutoTokenizer

    from ..training.config import loading
    from ..training.pipeline import evaluate, load_records
    from ..training.smallcap import DATASTORE_DIR
    from ._inputs import load_model_and_processor

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
    print(describe(args, task, len(records)) + ":", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
