"""`splice datastore build` / `splice datastore query`: embed a caption corpus into a datastore, or print what it
retrieves for images (the library side is `splice.retrieval`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..training.config import ConfigError

# Copies of `splice.retrieval.KEY_KINDS`, `INDEX_KINDS` and `FLAT_LIMIT` (importing `splice.retrieval` loads torch and
# faiss for `--help`); a test keeps them equal.
KEY_KINDS = ("text", "image")
INDEX_KINDS = ("auto", "flat", "ivfsq", "ivfpq", "ivfflat")
FLAT_LIMIT = 262_144


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`build` and `query` under the `datastore` parser; each sets `args.func`."""
    from . import DefaultsHelpFormatter
    from ._inputs import at_least_one

    actions = parser.add_subparsers(dest="datastore_command", required=True, help="build or query")
    adding = {"formatter_class": DefaultsHelpFormatter}
    build = actions.add_parser("build", help="embed a caption corpus into a datastore", **adding)
    build.add_argument(
        "--captions",
        required=True,
        help='.jsonl of {"caption", "group"?, "image"?}, .txt with one caption per line, .parquet with a "caption" '
        '(and "group") column, or builtin:shapes[:domain]; text keys from a file are read and indexed in batches',
    )
    build.add_argument("--embedder", required=True, help="CLIP-style checkpoint: hub id or directory")
    build.add_argument(
        "--keys", choices=KEY_KINDS, default="text", help="what the keys embed: the captions, or their images"
    )
    build.add_argument("--output", required=True, help="directory to save the datastore in")
    build.add_argument("--n", type=at_least_one, default=1000, help="examples to generate for builtin captions")
    build.add_argument("--seed", type=int, default=0, help="seed of builtin captions")
    build.add_argument("--batch-size", type=at_least_one, default=64, help="captions (or images) embedded together")
    build.add_argument(
        "--index",
        default="auto",
        help=f"{' | '.join(INDEX_KINDS)} | a FAISS index_factory string (e.g. 'IVF4096,PQ64'); auto: exact (flat) up "
        "to --flat-limit keys, else IVF-SQ8 (IVF lists of 8-bit keys) on disk",
    )
    build.add_argument("--flat-limit", type=at_least_one, default=FLAT_LIMIT, help="the most keys auto keeps exact")
    build.add_argument("--keep-vectors", action="store_true", help="keep the keys as vectors.f32 beside the index")
    build.add_argument("--ray", action="store_true", help="embed the captions on Ray Data workers (text keys)")
    build.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start a local one)")
    build.add_argument("--workers", type=at_least_one, default=2, help="embedding workers (with --ray)")
    build.set_defaults(func=datastore_build_command)

    query = actions.add_parser("query", help="print the captions retrieved for images, as JSONL", **adding)
    query.add_argument("datastore", help="a directory saved by `datastore build`")
    query.add_argument("images", nargs="+", help="image files, folders or globs")
    query.add_argument("--k", type=at_least_one, default=4, help="captions retrieved per image (the nearest k)")
    query.add_argument(
        "--embedder", default=None, help="the embedding checkpoint (default: the one the datastore was built with)"
    )
    query.add_argument("--batch-size", type=at_least_one, default=32, help="images embedded together")
    query.add_argument(
        "--nprobe", type=at_least_one, default=None, help="lists an IVF index searches (default: the one saved)"
    )
    for action in (build, query):  # also after the action (`splice datastore build ... --verbose`)
        action.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=parser_verbose(parser))
    query.set_defaults(func=datastore_query_command)


def parser_verbose(parser: argparse.ArgumentParser) -> str:
    """The help text of the command's `--verbose` flag."""
    return next(a.help for a in parser._actions if "--verbose" in a.option_strings) or ""


def run(args: argparse.Namespace) -> None:
    """Run the `build` or `query` command chosen."""
    args.func(args)


def _read_captions(source: str, n: int, seed: int) -> tuple[list[str], list[str | None], list[Any] | None]:
    """Captions, groups and images (or `None`) of a `--captions` source."""
    if source.startswith("builtin:"):
        from ..data.builtin import make_dataset

        task, _, domain = source.removeprefix("builtin:").partition(":")
        if task != "shapes":
            raise ConfigError(f"--captions {source!r}: the built-in captions are builtin:shapes[:domain]")
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
    raise ConfigError(f"--captions {source!r}: must be a .jsonl or .txt file, or builtin:shapes[:domain]")


def datastore_build_command(args: argparse.Namespace) -> None:
    r"""`splice datastore build`: embed `--captions` with `--embedder` and save to `--output`; prints a JSON summary.

    Text keys from a file stream into an on-disk datastore (`splice.retrieval.build_datastore`, or Ray Data workers
    with `--ray`); image keys and built-in captions are built in memory, exact (`Datastore.build`)."""
    from ..retrieval import Datastore, Embedder

    if args.keys == "text" and not args.captions.startswith("builtin:"):
        _build_on_disk(args)
        return
    if args.ray or args.index not in ("auto", "flat"):
        flag = "--ray" if args.ray else f"--index {args.index}"
        raise ConfigError(
            f"{flag} builds text keys from a caption file; image keys and builtin captions are built in memory with "
            "an exact index: drop the flag, or use --keys text with a .txt/.jsonl/.parquet file"
        )
    captions, groups, images = _read_captions(args.captions, args.n, args.seed)
    if args.keys == "image" and images is None:
        raise ConfigError(
            f'--keys image needs an "image" on every line of {args.captions}; add them, or use --keys text'
        )
    embedder = Embedder.from_pretrained(args.embedder)
    datastore = Datastore.build(captions, embedder, groups, args.keys, images, args.batch_size)
    datastore.save(args.output)
    summary = {"output": args.output, "count": len(datastore), "dim": datastore.dim, "keys": args.keys, "index": "Flat"}
    print(json.dumps(summary))


def _build_on_disk(args: argparse.Namespace) -> None:
    """Stream `--captions` into an on-disk datastore, embedded here or on Ray Data workers (`--ray`)."""
    from ..retrieval import build_datastore

    if Path(args.captions).suffix not in (".txt", ".jsonl", ".parquet"):
        raise ConfigError(f"--captions {args.captions!r}: must be a .txt, .jsonl or .parquet file, or builtin:shapes")
    options = {"index": args.index, "keep_vectors": args.keep_vectors, "flat_limit": args.flat_limit}
    if args.ray:
        from ..scale.cluster import connect
        from ..scale.datastore import build_datastore_on_ray

        connect(args.ray_address)
        meta = build_datastore_on_ray(
            args.captions, args.embedder, args.output, workers=args.workers, batch_size=args.batch_size, **options
        )
    else:
        from ..retrieval import Embedder

        embedder = Embedder.from_pretrained(args.embedder)
        meta = build_datastore(args.captions, embedder, args.output, batch_size=args.batch_size, **options)
    summary = {
        "output": args.output,
        "count": meta["count"],
        "dim": meta["dim"],
        "keys": "text",
        "index": meta["index"],
    }
    print(json.dumps(summary))


def datastore_query_command(args: argparse.Namespace) -> None:
    r"""`splice datastore query`: print one JSON line `{"file", "captions"}` per image."""
    from ..retrieval import FROZEN_ENCODER_EMBEDDER, Datastore, Embedder, read_datastore_meta
    from ._inputs import expand_inputs, readable_images, report_skipped

    name = args.embedder or read_datastore_meta(args.datastore)["embedder"].get("name_or_path")
    if name == FROZEN_ENCODER_EMBEDDER:
        raise ConfigError(
            f"{args.datastore}: this datastore's keys come from a captioner's frozen encoder; query it with "
            "`splice caption MODEL IMAGES --datastore DIR`, or build one with a CLIP checkpoint (--embedder)."
        )
    datastore = Datastore.load(args.datastore, Embedder.from_pretrained(name), nprobe=args.nprobe)
    paths, skipped = readable_images(expand_inputs(args.images))
    for path, captions in zip(paths, datastore.retrieve_for_images(paths, args.k, batch_size=args.batch_size)):
        sys.stdout.write(json.dumps({"file": str(path), "captions": captions}) + "\n")
    report_skipped(skipped)
