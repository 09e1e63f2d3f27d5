"""`splice caption MODEL INPUTS...`: caption image files, folders or globs with a trained model."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice caption`."""
    from ._inputs import at_least_one

    parser.add_argument("model")
    parser.add_argument("inputs", nargs="+", help="image files, folders or globs")
    parser.add_argument("--batch-size", type=at_least_one, default=16)
    parser.add_argument("--num-beams", type=at_least_one, default=1)
    parser.add_argument("--max-new-tokens", type=at_least_one, default=None, help="default: the model's own")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    parser.add_argument("--output", help="write here instead of standard output")
    parser.add_argument("--datastore", help="SmallCap: retrieve prompts from this datastore directory")


def run(args: argparse.Namespace) -> None:
    """Caption every readable image, one line each (`text`: path and caption; `jsonl`: `{"file", "caption"}`)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    from ..data_io import open_image
    from ._inputs import expand_inputs, load_model_and_processor, readable_images, report_skipped

    paths, skipped = readable_images(expand_inputs(args.inputs))  # before loading the model: bad inputs fail at once
    model, processor = load_model_and_processor(args.model, AutoModelForImageTextToText)
    datastore = None
    if args.datastore:
        from ..retrieval import load_datastore_for

        if not hasattr(model, "prompts"):
            raise SystemExit("splice caption: --datastore needs a retrieval-augmented (SmallCap) model.")
        datastore = load_datastore_for(args.datastore, model, processor.image_processor)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    kwargs = {"num_beams": args.num_beams}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    for start in tqdm(range(0, len(paths), args.batch_size), desc="captioning", file=sys.stderr):
        batch = paths[start : start + args.batch_size]
        images = [open_image(path) for path in batch]
        if datastore is not None:  # retrieval prompts from this datastore (swap it to change domain, no retraining)
            kwargs["retrieved_captions"] = datastore.retrieve_for_images(images, k=model.config.retrieval_k)
        with torch.no_grad():
            captions = model.caption(images, processor=processor, **kwargs)
        for path, caption in zip(batch, captions):
            line = json.dumps({"file": str(path), "caption": caption}) if args.format == "jsonl" else caption
            out.write((line if args.format == "jsonl" else f"{path}\t{caption}") + "\n")
    if args.output:
        out.close()
    report_skipped(skipped)
