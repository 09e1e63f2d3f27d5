"""`splice caption MODEL INPUTS...`: caption image files, folders or globs with a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice caption`, each with its help and default."""
    from ._inputs import add_decoding_arguments, at_least_one

    parser.add_argument("model", help="a model directory saved by `splice train` or `splice demo` (or a hub id)")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    parser.add_argument("--batch-size", type=at_least_one, default=16, help="images captioned together")
    parser.add_argument("--num-beams", type=at_least_one, default=1, help="beam search width (1: greedy)")
    parser.add_argument(
        "--max-new-tokens", type=at_least_one, default=None, help="longest caption in tokens (default: the model's own)"
    )
    parser.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help='"text": path<TAB>caption; "jsonl": {"file", "caption"}',
    )
    parser.add_argument("--output", help="write the captions to this file (default: standard output)")
    parser.add_argument("--datastore", help="SmallCap: retrieve prompts from this datastore directory (default: none)")
    add_decoding_arguments(
        parser,
        "decode through a compiled step (static cache + torch.compile; same captions): faster per image after a "
        "compilation of up to a minute or two, for long runs; greedy or sampling only (beams decode eagerly)",
    )
    parser.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="also write each generated token's attention over its image as DIR/<image>/<NN>-<token>.png "
        "(native, injected or prefix conditioning; with beams, the best beam's)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="caption on Ray Data (an actor pool, one model per worker) into --output, a folder of shards named "
        "*.parquet or *.jsonl; re-running skips inputs already captioned; INPUTS may also be .jsonl/.parquet manifests",
    )
    parser.add_argument("--ray-address", help="with --ray: a running Ray cluster (default: start a local one)")
    parser.add_argument(
        "--workers", type=at_least_one, default=1, help="with --ray: model replicas (actors), 1 CPU each"
    )


def check(args: argparse.Namespace) -> None:
    """The cheap checks, before torch loads: the model path, and inputs that hold image files."""
    from ..training.config import ConfigError, missing_path
    from ._inputs import expand_inputs

    missing = missing_path("model", args.model, "the MODEL argument")
    if missing is not None:
        raise missing
    check_compile(args)
    expand_inputs(args.inputs)
    if args.output and not Path(args.output).absolute().parent.is_dir():
        raise ConfigError(f"--output {args.output!r}: its folder does not exist; create it or write elsewhere")


def check_compile(args: argparse.Namespace) -> None:
    """`--compile` is for the PyTorch captioning loop: with `--heatmaps` or `--ray` it would be silently ignored."""
    from ..training.config import ConfigError

    if args.compile and (args.heatmaps or args.ray):
        other = "--heatmaps" if args.heatmaps else "--ray"
        raise ConfigError(f"--compile: not with {other} (that path decodes eagerly); drop one of them")


def check_generation(model: Any, args: argparse.Namespace) -> None:
    """`--max-new-tokens` and `--num-beams` within what the model can generate, checked before any image is read.

    Raises:
        `ConfigError`: the model's own check (`generate` runs it too), as a flag error.
    """
    from ..models.checks import check_generate_arguments
    from ..training.config import ConfigError

    try:
        check_generate_arguments(
            model, None, None, {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
        )
    except ValueError as error:
        given = f"--max-new-tokens {args.max_new_tokens}" if args.max_new_tokens else "the model's max_new_tokens"
        raise ConfigError(f"{given}: {str(error).removeprefix('generate(): ')}") from None


def run(args: argparse.Namespace) -> None:
    """Caption every readable image, one line each (`text`: path and caption; `jsonl`: `{"file", "caption"}`).

    MODEL may be a directory written by `splice export`: it is then run on onnxruntime (`splice_onnx`, no torch).
    """
    from pathlib import Path

    from splice_onnx import MANIFEST

    check_compile(args)
    if args.ray:
        return _run_ray(args)
    if (Path(args.model) / MANIFEST).is_file():
        if args.heatmaps or args.compile:
            from ..training.config import ConfigError

            flag = "--heatmaps" if args.heatmaps else "--compile"
            raise ConfigError(f"{flag}: {args.model!r} is an export (onnxruntime); pass the PyTorch model directory")
        return _run_onnx(args)
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText

    from ..data_io import open_image
    from ..precision import apply_precision
    from ..training.config import ConfigError, loading
    from ._inputs import expand_inputs, load_model_and_processor, readable_images, report_skipped

    paths, skipped = readable_images(expand_inputs(args.inputs))  # before loading the model: bad inputs fail at once
    model, processor = load_model_and_processor(args.model, AutoModelForImageTextToText)
    model = apply_precision(model, args.dtype, args.quantize)
    check_generation(model, args)
    datastore = None
    if args.datastore:
        from ..retrieval import load_datastore_for

        if not hasattr(model, "prompts"):
            raise ConfigError(
                f"--datastore {args.datastore}: {args.model!r} is not a retrieval-augmented (SmallCap) model; drop "
                "--datastore, or pass a model trained with --preset smallcap."
            )
        with loading("datastore", args.datastore, "datastore"):
            datastore = load_datastore_for(args.datastore, model, processor.image_processor)
    backend = _heatmap_backend(args, model, processor, datastore) if args.heatmaps else None
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    kwargs = {"num_beams": args.num_beams}
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.compile:  # its lines about compiling go to standard error: standard output holds the captions
        from ..models.compiled_step import CompiledDecoding

        kwargs["generate"] = CompiledDecoding(model, file=sys.stderr).generate
    for start in tqdm(range(0, len(paths), args.batch_size), desc="captioning", file=sys.stderr):
        batch = paths[start : start + args.batch_size]
        images = [open_image(path) for path in batch]
        if datastore is not None:  # retrieval prompts from this datastore (swap it to change domain, no retraining)
            kwargs["retrieved_captions"] = datastore.retrieve_for_images(images, k=model.config.retrieval_k)
        if backend is not None:  # the same captions, and each token's attention map written out
            captions = _caption_with_heatmaps(backend, batch, images, args)
        else:
            with torch.no_grad():
                captions = model.caption(images, processor=processor, **kwargs)
        for path, caption in zip(batch, captions):
            line = json.dumps({"file": str(path), "caption": caption}) if args.format == "jsonl" else caption
            out.write((line if args.format == "jsonl" else f"{path}\t{caption}") + "\n")
    if args.output:
        out.close()
    report_skipped(skipped)


def _heatmap_backend(args: argparse.Namespace, model: Any, processor: Any, datastore: Any) -> Any:
    """`splice serve`'s PyTorch backend over the loaded model (it computes the maps); a `ConfigError` if it cannot."""
    from ..serve.backend import Settings
    from ..serve.torch_backend import TorchBackend
    from ..training.config import ConfigError

    backend = TorchBackend(model, processor, Path(args.model).name, datastore)
    problem = backend.heatmap_problem(Settings(args.num_beams, args.max_new_tokens, heatmap=True))
    if problem:
        raise ConfigError(f"--heatmaps {args.heatmaps}: {problem.removeprefix('heatmap=true ')}")
    return backend


def _caption_with_heatmaps(backend: Any, paths: list, images: list, args: argparse.Namespace) -> list[str]:
    """Caption a batch; write one overlay PNG per generated token under `args.heatmaps/<image stem>/`."""
    from ..serve.backend import Settings
    from ..serve.heatmaps import write_token_heatmaps

    outputs = backend.run(images, Settings(args.num_beams, args.max_new_tokens, heatmap=True))
    for path, image, output in zip(paths, images, outputs):
        write_token_heatmaps(Path(args.heatmaps) / Path(path).stem, image, output.tokens, output.attention)
    return [output.text for output in outputs]


def _run_onnx(args: argparse.Namespace) -> None:
    """`splice caption OUT_DIR ...` on an exported directory: the same output, generated by onnxruntime."""
    from splice_onnx import OnnxCaptioner

    from ..data_io import open_image
    from ._inputs import expand_inputs, readable_images, report_skipped

    if args.datastore:
        raise SystemExit("splice caption: --datastore is not supported for an ONNX export; use the PyTorch model.")
    paths, skipped = readable_images(expand_inputs(args.inputs))
    model = OnnxCaptioner.from_pretrained(args.model)
    kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        for path, caption in zip(batch, model.caption([open_image(path) for path in batch], **kwargs)):
            record = json.dumps({"file": str(path), "caption": caption})
            out.write((record if args.format == "jsonl" else f"{path}\t{caption}") + "\n")
    if args.output:
        out.close()
    report_skipped(skipped)


def _run_ray(args: argparse.Namespace) -> None:
    """`splice caption --ray`: the inputs (manifests expanded) captioned by `splice.scale.captioning` on Ray Data."""
    from ..scale.captioning import Options, caption_on_ray, is_manifest, output_format, read_manifest
    from ..training.config import ConfigError
    from ._inputs import expand_inputs

    if not args.output:
        raise ConfigError("--ray: give --output captions.parquet (or captions.jsonl), the folder the shards go to")
    if args.heatmaps:
        raise ConfigError(f"--heatmaps {args.heatmaps}: not with --ray; drop one of them")
    try:
        output_format(args.output)
        manifests = [item for item in args.inputs if is_manifest(item)]
        files = [f for m in manifests for f in read_manifest(m)]
        others = [item for item in args.inputs if item not in manifests]
        files += [str(path) for path in expand_inputs(others)] if others else []
        options = Options(args.num_beams, args.max_new_tokens, args.dtype, args.quantize, args.datastore)
        caption_on_ray(files, args.model, args.output, options, args.workers, args.batch_size, args.ray_address)
    except ValueError as error:
        raise ConfigError(str(error)) from None
