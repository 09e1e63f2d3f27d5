"""Caption streams: a `.txt`, `.jsonl` or `.parquet` corpus read in batches, never all at once.

[`caption_batches`] yields `(captions, groups)` of at most `batch_size` rows, in file order, so a corpus of any
length is embedded and written one batch at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIXES = (".txt", ".jsonl", ".parquet")
Batch = tuple[list[str], list[str | None]]


def caption_batches(path: str | os.PathLike, batch_size: int = 1024) -> Iterator[Batch]:
    r"""
    The captions (and groups) of a corpus file, `batch_size` rows at a time.

    Args:
        path (`str` or `os.PathLike`): `.txt` (one caption a line, blank lines skipped), `.jsonl` (one
            `{"caption", "group"?}` a line) or `.parquet` (a `caption` column and an optional `group` column).
        batch_size (`int`, *optional*, defaults to 1024): rows per batch.

    Yields:
        `tuple[list[str], list[str | None]]`: the captions of a batch and their groups (as `str`, `None` for none).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"captions {str(path)!r}: must be a {', '.join(SUFFIXES)} file")
    if not path.is_file():
        raise FileNotFoundError(f"captions {str(path)!r}: no such file")
    rows = _parquet_rows(path, batch_size) if path.suffix == ".parquet" else _line_rows(path)
    captions: list[str] = []
    groups: list[str | None] = []
    for caption, group in rows:
        captions.append(caption)
        groups.append(None if group is None else str(group))
        if len(captions) == batch_size:
            yield captions, groups
            captions, groups = [], []
    if captions:
        yield captions, groups


def _line_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """`(caption, group)` of each non-blank line of a `.txt` or `.jsonl` file, read line by line."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if path.suffix == ".txt":
                yield line.strip(), None
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"captions {str(path)!r} line {number}: not JSON ({error.msg}); write one JSON object a line"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("caption"), str):
                raise ValueError(
                    f"captions {str(path)!r} line {number}: {line.strip()[:80]!r} has no string field `caption`; "
                    'write one object a line, e.g. {"caption": "a dog on a beach", "group": "img-17"}'
                )
            yield record["caption"], record.get("group")


def _parquet_rows(path: Path, batch_size: int) -> Iterator[tuple[str, Any]]:
    """`(caption, group)` of each row of a Parquet file, read one record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError("Reading captions from Parquet needs pyarrow: `pip install pyarrow`.") from error
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "caption" not in names:
        raise ValueError(f"captions {str(path)!r}: no column `caption` (it has {names}); name the caption column so")
    columns = ["caption"] + (["group"] if "group" in names else [])
    for batch in file.iter_batches(batch_size=batch_size, columns=columns):
        captions = batch.column("caption").to_pylist()
        groups = batch.column("group").to_pylist() if "group" in columns else [None] * len(captions)
        yield from zip(captions, groups)
