"""The `splice` command line: `demo`, `train`, `caption`, `eval`, `datastore`."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
from pathlib import Path
from typing import Any

from .data import IMAGE_SUFFIXES, UNREADABLE_IMAGE_ERRORS


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    parser.add_argument("--config", help="YAML file of TrainConfig fields; flags given here override it")
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        if spec.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif "dict" in str(spec.type) or "list" in str(spec.type):
            parser.add_argument(flag, type=_json_or_str, default=None, help="a value, or JSON (object or list)")
        else:
            kind = {"int": int, "float": float}.get(str(spec.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=None)


def _json_or_str(value: str) -> Any:
    return json.loads(value) if value.lstrip()[:1] in ("{", "[") or value.isdigit() else value


def _expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images) and globs, in order, without duplicates."""
    paths: list[Path] = []
    for item in inputs:
        matches = [Path(m) for m in sorted(glob.glob(item))] or [Path(item)]
        for path in matches:
            if path.is_dir():
                paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
            elif path.exists():
                paths.append(path)
            else:
                raise SystemExit(f"splice: no such file, folder or glob match: {item}")
    return list(dict.fromkeys(paths))


def caption_command(args: argparse.Namespace) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    from .data import open_image
    from .processing import SpliceProcessor

    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = SpliceProcessor.from_pretrained(args.model)
    datastore = None
    if args.datastore:
        from .retrieval import load_datastore_for

        if not hasattr(model, "prompts"):
            raise SystemExit("splice caption: --datastore needs a retrieval-augmented (SmallCap) model.")
        datastore = load_datastore_for(args.datastore, model, processor.image_processor)
    paths = _expand_inputs(args.inputs)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    kwargs = {"num_beams": args.num_beams} | ({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})
    skipped = 0
    for start in tqdm(range(0, len(paths), args.batch_size), desc="captioning", file=sys.stderr):
        batch, images = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                images.append(open_image(path))
                batch.append(path)
            except UNREADABLE_IMAGE_ERRORS:
                skipped += 1
        if not images:
            continue
        if datastore is not None:  # retrieval prompts from this datastore (swap it to change domain, no retraining)
            kwargs["retrieved_captions"] = datastore.retrieve_for_images(images, k=model.config.retrieval_k)
        with torch.no_grad():
            captions = model.caption(images, processor=processor, **kwargs)
        for path, caption in zip(batch, captions):
            line = json.dumps({"file": str(path), "caption": caption}) if args.format == "jsonl" else caption
            out.write((line if args.format == "jsonl" else f"{path}\t{caption}") + "\n")
    if skipped:
        print(f"skipped {skipped} unreadable images", file=sys.stderr)
    if args.output:
        out.close()


def eval_command(args: argparse.Namespace) -> None:
    from transformers import AutoModel, AutoTokenizer

    from .processing import SpliceProcessor
    from .train import TrainConfig, evaluate, infer_task, load_records

    model = AutoModel.from_pretrained(args.model).eval()  # after `import splice`: the splice class of the checkpoint
    task = infer_task(TrainConfig(data=args.data, task=args.task))
    if task == "text":
        tokenizer, image_processor = AutoTokenizer.from_pretrained(args.model), None
    else:
        processor = SpliceProcessor.from_pretrained(args.model)
        tokenizer, image_processor = processor.tokenizer, processor.image_processor
    records = load_records(args.data, task, args.n, args.seed, None)
    datastore_dir = Path(args.model) / "datastore"
    if hasattr(model, "prompts"):  # SmallCap: retrieval prompts from the datastore saved with the model, if any
        retrieved = [[] for _ in records]
        if datastore_dir.is_dir():
            from .retrieval import load_datastore_for

            datastore = load_datastore_for(datastore_dir, model, image_processor)
            retrieved = datastore.retrieve_for_images([r["image"] for r in records], k=model.config.retrieval_k)
        records = [r | {"retrieved": c} for r, c in zip(records, retrieved)]
    metrics = evaluate(model, records, tokenizer, image_processor, task, args.batch_size)
    print(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="splice", description="Splice any encoder onto any decoder.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train a small captioner on generated data, offline, and caption samples")
    demo.add_argument("--task", choices=("shapes", "ocr"), default="shapes")
    demo.add_argument("--output-dir", default=None, help="default: splice-demo-<task>")
    demo.add_argument("--quick", action="store_true", help="a few steps on a handful of samples (smoke test)")

    train = commands.add_parser("train", help="train with Seq2SeqTrainer (flags or --config YAML)")
    _train_flags(train)

    caption = commands.add_parser("caption", help="caption images with a trained model")
    caption.add_argument("model")
    caption.add_argument("inputs", nargs="+", help="image files, folders or globs")
    caption.add_argument("--batch-size", type=int, default=16)
    caption.add_argument("--num-beams", type=int, default=1)
    caption.add_argument("--max-new-tokens", type=int, default=None)
    caption.add_argument("--format", choices=("text", "jsonl"), default="text")
    caption.add_argument("--output", help="write here instead of standard output")
    caption.add_argument("--datastore", help="SmallCap: retrieve prompts from this datastore directory")

    evaluate = commands.add_parser("eval", help="print a trained model's metrics on a data source")
    evaluate.add_argument("model")
    evaluate.add_argument("data", help="builtin:shapes, builtin:ocr, an image folder, a .json or .jsonl file")
    evaluate.add_argument("--task", choices=("caption", "ocr", "text"), default=None)
    evaluate.add_argument("--n", type=int, default=200, help="scenes to generate for built-in data")
    evaluate.add_argument("--seed", type=int, default=12345)
    evaluate.add_argument("--batch-size", type=int, default=32)

    from .retrieval import add_datastore_parser

    add_datastore_parser(commands)

    args = parser.parse_args(argv)
    if args.command == "datastore":
        args.func(args)
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(args.task, args.output_dir, quick=args.quick)
    elif args.command == "train":
        from .train import TrainConfig, train

        overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config")}
        config = TrainConfig.from_yaml(args.config, **overrides) if args.config else TrainConfig(**overrides)
        print(json.dumps(train(config), indent=2))
    elif args.command == "caption":
        caption_command(args)
    else:
        eval_command(args)


if __name__ == "__main__":
    main()
