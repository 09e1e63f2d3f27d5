"""Batch captioning on Ray Data: `splice caption MODEL INPUTS --ray --output out.parquet|out.jsonl`.

The inputs (file paths or URIs pyarrow can open, e.g. `s3://bucket/a.jpg`) become a dataset of rows `{"file"}`; a pool
of actors (`ActorPoolStrategy(size=workers)`) each load the model once and caption batches of `batch_size` images
exactly as the single-process `splice caption` does (`model.caption`, or `OnnxCaptioner` for an export); the rows
`{"file", "caption", "model", "error"}` stream into shard files in the folder `output` as blocks finish. An image
that cannot be read is a row with `caption` null and `error` set, never a failed job. Re-running with the same
`output` captions only the inputs it holds no caption for (resumable), and refuses an `output` written by another
model.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
MANIFEST_COLUMNS = ("file", "path", "image")  # the column of a manifest that names the images, first found
COLUMNS = ("file", "caption", "model", "error")


@dataclass(frozen=True)
class Options:
    """How each worker captions: the flags of `splice caption` that change a caption."""

    num_beams: int = 1
    max_new_tokens: int | None = None
    dtype: str | None = None
    quantize: str | None = None
    datastore: str | None = None


@dataclass
class Summary:
    """What a run did: inputs captioned now, already captioned before (skipped), unreadable (listed), seconds."""

    captioned: int = 0
    already_done: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        """One line for stderr: the counts, the throughput and the first unreadable inputs."""
        rate = self.captioned / self.seconds if self.seconds else 0.0
        text = (
            f"captioned {self.captioned} image(s) in {self.seconds:.1f} s ({rate:.1f}/s); "
            f"{self.already_done} already captioned (skipped); {len(self.unreadable)} unreadable"
        )
        if self.unreadable:
            shown = ", ".join(f"{name} ({why})" for name, why in self.unreadable[:5])
            more = ", ..." if len(self.unreadable) > 5 else ""
            text += f": {shown}{more} (all listed with their error in the output)"
        return text


def output_format(output: str | Path) -> str:
    """`"parquet"` or `"jsonl"` by the suffix of `output`; a `ValueError` naming the accepted suffixes otherwise."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"--output {str(output)!r}: with --ray the output is a folder of shards named like a file, ending in "
            f"{' or '.join(FORMATS)} (e.g. --output captions.parquet)"
        )
    return FORMATS[suffix]


def is_manifest(path: str | Path) -> bool:
    """A `.jsonl` or `.parquet` file: a manifest naming images (one per row), not an image."""
    return Path(path).suffix.lower() in FORMATS and Path(path).is_file()


def read_manifest(path: str | Path) -> list[str]:
    r"""
    The images a manifest names: its first column among `file`, `path`, `image`; relative paths are taken from the
    manifest's folder, URIs (`scheme://...`) as they are.

    Raises:
        `ValueError`: no such column, or a JSONL line that is not a JSON object (naming the line and the fix).
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        column = next((c for c in MANIFEST_COLUMNS if c in names), None)
        if column is None:
            raise ValueError(f"manifest {str(path)!r}: no column {' / '.join(MANIFEST_COLUMNS)} (it has {names})")
        values = [str(v) for v in pq.read_table(path, columns=[column]).column(column).to_pylist()]
    else:
        values = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"manifest {str(path)!r} line {number}: not JSON ({error.msg}); write one JSON object a line"
                raise ValueError(message) from None
            column = next((c for c in MANIFEST_COLUMNS if isinstance(record, dict) and c in record), None)
            if column is None:
                raise ValueError(
                    f"manifest {str(path)!r} line {number}: {line[:80]!r} has no field {' / '.join(MANIFEST_COLUMNS)};"
                    ' write one object a line, e.g. {"file": "images/0001.jpg"}'
                )
            values.append(str(record[column]))
    return [v if "://" in v or Path(v).is_absolute() else str(path.parent / v) for v in values]


def read_output(output: str | Path) -> list[dict[str, Any]]:
    """Every row in the shards of `output` (empty when it does not exist yet), in no particular order."""
    folder, kind = Path(output), output_format(output)
    if not folder.is_dir():
        return []
    rows: list[dict[str, Any]] = []
    for shard in sorted(folder.iterdir()):
        if kind == "parquet" and shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(shard).to_pylist())
        elif kind == "jsonl" and shard.suffix in (".json", ".jsonl"):
            rows.extend(json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines() if line.strip())
    return rows


def is_export(model_dir: str | Path) -> bool:
    """A directory written by `splice export` (run on onnxruntime)."""
    from splice_onnx import MANIFEST

    return (Path(model_dir) / MANIFEST).is_file()


def load_captioner(model_dir: str, options: Options, threads: int | None = None) -> Any:
    """`captions(images) -> list[str]` for `model_dir`, as single-process `splice caption` computes them (`threads`:
    onnxruntime's intra-op threads for an export, whose default is one per core whatever the worker's share)."""
    if is_export(model_dir):  # onnxruntime, no torch
        from splice_onnx import OnnxCaptioner

        onnx = OnnxCaptioner.from_pretrained(model_dir, threads=threads)
        return lambda images: onnx.caption(images, num_beams=options.num_beams, max_new_tokens=options.max_new_tokens)
    import torch
    from transformers import AutoModelForImageTextToText

    from ..precision import apply_precision
    from ..processing import SpliceProcessor

    model = apply_precision(
        AutoModelForImageTextToText.from_pretrained(model_dir).eval(), options.dtype, options.quantize
    )
    processor = SpliceProcessor.from_pretrained(model_dir)
    datastore = None
    if options.datastore:
        from ..retrieval import load_datastore_for

        datastore = load_datastore_for(options.datastore, model, processor.image_processor)
    kwargs: dict[str, Any] = {"num_beams": options.num_beams}
    if options.max_new_tokens is not None:
        kwargs["max_new_tokens"] = options.max_new_tokens

    def captions(images: list) -> list[str]:
        extra = {}
        if datastore is not None:
            extra["retrieved_captions"] = datastore.retrieve_for_images(images, k=model.config.retrieval_k)
        with torch.no_grad():
            return model.caption(images, processor=processor, **kwargs, **extra)

    return captions


def read_image(file: str) -> Any:
    """An RGB image from a local path or a URI pyarrow's filesystems open (`s3://`, `gs://`, `hdfs://`, ...)."""
    from ..data_io import open_image

    if "://" in file and not file.startswith("file://"):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(file)
        with filesystem.open_input_file(inner) as stream:
            return open_image(stream.read())
    return open_image(file.removeprefix("file://"))


class CaptionWorker:
    """One actor of the pool: loads the model once, then captions batches of `{"file"}` rows."""

    def __init__(self, model_dir: str, model_id: str, options: Options, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.model_id = model_id
        self.captions = load_captioner(model_dir, options, threads)

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from ..data_io import UNREADABLE_IMAGE_ERRORS

        files = [str(f) for f in batch["file"]]
        captions: list[str | None] = [None] * len(files)
        errors: list[str | None] = [None] * len(files)
        images, readable = [], []
        for i, file in enumerate(files):
            try:
                images.append(read_image(file))
                readable.append(i)
            except UNREADABLE_IMAGE_ERRORS as error:
                errors[i] = str(error).splitlines()[0][:300] or type(error).__name__
        if images:
            try:
                texts = self.captions(images)
            except Exception:  # one bad input must not fail its batch: caption one at a time, errors per image
                texts = []
                for i, image in zip(readable, images):
                    try:
                        texts.extend(self.captions([image]))
                    except Exception as error:  # noqa: BLE001 — recorded in the row, counted, listed
                        texts.append(None)
                        errors[i] = f"generation failed: {type(error).__name__}: {error}"[:300]
            for i, text in zip(readable, texts):
                captions[i] = text
        return pa.table(
            {"file": files, "caption": captions, "model": [self.model_id] * len(files), "error": errors},
            schema=pa.schema([(name, pa.string()) for name in COLUMNS]),
        )


def caption_on_ray(
    files: Sequence[str],
    model_dir: str,
    output: str | Path,
    options: Options | None = None,
    workers: int = 1,
    batch_size: int = 16,
    address: str | None = None,
    model_id: str | None = None,
) -> Summary:
    r"""
    Caption `files` on a Ray cluster into the shard folder `output`, skipping those it already holds a caption for.

    Args:
        files: image paths or URIs, in order (duplicates are captioned once).
        model_dir: a directory saved by `splice train` (PyTorch) or written by `splice export` (onnxruntime).
        output: a folder named `*.parquet` or `*.jsonl`; created if missing; each run adds shards to it.
        options (*optional*): beams, caption length, dtype, quantization, SmallCap datastore.
        workers: actors in the pool, each holding one model (one CPU each).
        batch_size: images captioned together by a worker.
        address (*optional*): a running cluster; default: the one this process joined, else a local one.
        model_id (*optional*): written in each row (default: `model_dir` as given).

    Raises:
        `ValueError`: an `output` suffix other than `.parquet` / `.jsonl`, an `output` written by another model, or
            a datastore with an export.
    """
    from .cluster import connect

    kind = output_format(output)
    options, model_id = options or Options(), model_id or str(model_dir)
    if options.datastore and is_export(model_dir):
        raise ValueError(
            f"--datastore {options.datastore!r}: {str(model_dir)!r} is an export (onnxruntime), which captions without "
            "retrieval; pass the PyTorch model directory"
        )
    done_rows = read_output(output)
    others = sorted({r["model"] for r in done_rows if r.get("model") != model_id})
    if others:
        raise ValueError(
            f"--output {str(output)!r} holds captions by model {others[0]!r}, not {model_id!r}; write to another "
            "--output, or delete that folder to start over"
        )
    done = {r["file"] for r in done_rows if r.get("caption") is not None}
    unique = list(dict.fromkeys(str(f) for f in files))
    todo = [f for f in unique if f not in done]
    summary = Summary(already_done=len(unique) - len(todo))
    started = time.perf_counter()
    if todo:
        ray = connect(address, num_cpus=None)
        from ray.data import ActorPoolStrategy

        blocks = max(workers * 2, min(len(todo) // max(batch_size, 1), 4096), 1)
        dataset = ray.data.from_items([{"file": f} for f in todo], override_num_blocks=min(blocks, len(todo)))
        captioned = dataset.map_batches(
            CaptionWorker,
            fn_constructor_args=(str(model_dir), model_id, options),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        Path(output).mkdir(parents=True, exist_ok=True)
        path = str(Path(output).absolute())
        if kind == "parquet":
            captioned.write_parquet(path, ray_remote_args={"num_cpus": 0})  # writes never wait for a CPU
        else:
            captioned.write_json(path, ray_remote_args={"num_cpus": 0})
        wanted = set(todo)
        written = [r for r in read_output(output) if r["file"] in wanted]
        summary.captioned = sum(r["caption"] is not None for r in written)
        summary.unreadable = sorted({(r["file"], r["error"]) for r in written if r["caption"] is None})
    summary.seconds = time.perf_counter() - started
    print(summary.line(), file=sys.stderr)
    return summary
