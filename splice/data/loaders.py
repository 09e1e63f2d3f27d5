"""Loaders for the usual caption/text formats: records from an image folder, COCO/Karpathy JSON, text-pair JSONL, or
any `datasets.Dataset`.

A record is a dict: `{"image": path | bytes | PIL.Image, "text": target}` for image-to-text,
`{"source": text, "text": target}` for text-to-text; optional `"prompt"` (decoder-side prefix, e.g. SmallCap's
retrieved captions: fed to the decoder, never scored) and `"references"` (all reference captions, for metrics).

Every record is checked before anything trains: a missing field, a caption that is not a string (or a list of
strings), a file that is not UTF-8 or not valid JSON raises `DataError` naming the file, the line, the field, the value
and the fix. Records whose target is empty are skipped, counted and named in one warning; when none remain, `DataError`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data_io import NAMED_IN_WARNINGS, DataError, keep_readable, parse_json, read_text

logger = logging.getLogger(__name__)

CAPTION_COLUMNS = ("text", "caption", "captions", "sentence")


def record_references(record: dict) -> list[str]:
    """Every reference text of a record: its `"references"`, else its one `"text"` (metrics and retrieval use these)."""
    return record.get("references") or [record["text"]]


class _Skipped:
    """Records skipped for an empty target: counted, the first few named in one warning at the end."""

    def __init__(self, source: str | Path):
        self.source, self.where = source, []

    def add(self, where: int | str) -> None:
        self.where.append(f"line {where}" if isinstance(where, int) else str(where))

    def finish(self, records: list[dict], total: int, fix: str) -> list[dict]:
        if self.where:
            more = ", ..." if len(self.where) > NAMED_IN_WARNINGS else ""
            named = ", ".join(self.where[:NAMED_IN_WARNINGS]) + more
            count = f"{len(self.where)} of {total}"
            logger.warning(f"{self.source}: skipped {count} records with an empty target: {named}.")
        if not records:
            problem = "every record's target is empty" if self.where else "no records"
            raise DataError(problem, file=self.source, fix=fix)
        return records


def _texts(value: Any, *, file: str | Path, line: int | str, field: str, lists: bool = True) -> list[str]:
    """The non-empty strings of a target field (a string, or a list of reference strings where `lists`)."""
    kind = "a string or a list of strings" if lists else "a string"
    if isinstance(value, str):
        texts = [value]
    elif lists and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise DataError(
                    f"must be {kind}; item {i} is {type(item).__name__}",
                    file=file,
                    line=line,
                    field=field,
                    value=value,
                    fix=f"make every item of {field!r} a caption string",
                )
        texts = value
    else:
        raise DataError(
            f"must be {kind}, not {'null' if value is None else type(value).__name__}",
            file=file,
            line=line,
            field=field,
            value=value,
            fix=f"give {field!r} a non-empty caption string" + (" or a list of them" if lists else ""),
        )
    return [t for t in texts if t.strip()]


def _string(value: Any, *, file: str | Path, line: int | str, field: str, fix: str) -> str:
    """A required non-empty string field."""
    if not isinstance(value, str) or not value.strip():
        problem = "is missing" if value is None else "must be a non-empty string"
        raise DataError(problem, file=file, line=line, field=field, value=value, fix=fix)
    return value


def _object(row: Any, *, file: str | Path, line: int | str) -> dict:
    if not isinstance(row, dict):
        raise DataError(
            f"expected a JSON object, got {type(row).__name__}",
            file=file,
            line=line,
            value=row,
            fix='write one {"key": value, ...} object per line',
        )
    return row


def _require(row: dict, key: str, *, file: str | Path, line: int | str, fix: str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(
            "is missing" if key not in row else "is null",
            file=file,
            line=line,
            field=key,
            value=row.get(key, sorted(map(str, row))),
            fix=fix,
        )
    return row[key]


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file."""
    rows = []
    # Split on "\n" only: `str.splitlines` also splits on U+2028 and "\x1c", which JSON strings may hold.
    for number, line in enumerate(read_text(path).split("\n"), 1):
        if line.strip():
            rows.append((number, _object(parse_json(line, path, number), file=path, line=number)))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every CSV row; a row with more or fewer values than the header is a `DataError`."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                header = reader.fieldnames or []
                values = [v for k, v in row.items() if k is not None and v is not None] + list(row.get(None, []))
                raise DataError(
                    f"{len(values)} values but the header has {len(header)} columns",
                    file=path,
                    line=reader.line_num,
                    value=row,
                    fix='quote fields that contain commas ("a red, round ball") and give every row every column',
                )
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise DataError(f"not valid CSV ({error})", file=path, line=reader.line_num, fix="fix the quoting") from None
    return rows


def load_imagefolder(directory: str | Path, text_column: str | None = None) -> list[dict]:
    r"""
    Load an image folder in the `datasets` imagefolder convention: images plus `metadata.jsonl` or `metadata.csv` with a
    `file_name` column and a caption column (a string, or in JSONL a list of reference strings).

    Args:
        directory: the folder.
        text_column (*optional*): caption column; defaults to the first of `text`, `caption`, `captions`, `sentence`.

    Raises:
        `DataError`: a row without `file_name` or the caption, a caption that is not a string (or list of strings), a
        file that is not UTF-8 or not valid JSON/CSV, or no rows with a caption. Rows with an empty caption are skipped
        with a warning; so are unreadable images.
    """
    directory = Path(directory)
    if (directory / "metadata.jsonl").exists():
        path = directory / "metadata.jsonl"
        rows = _read_jsonl(path)
    elif (directory / "metadata.csv").exists():
        path = directory / "metadata.csv"
        rows = _read_csv(path)
    else:
        raise FileNotFoundError(f"{directory} has neither metadata.jsonl nor metadata.csv (imagefolder convention).")
    if not rows:
        raise DataError("no rows", file=path, fix="add one row per image with `file_name` and a caption")
    first_line, first = rows[0]
    column = text_column or next((c for c in CAPTION_COLUMNS if c in first), None)
    if column is None:
        raise DataError(
            "no caption column",
            file=path,
            line=first_line,
            value=sorted(map(str, first)),
            fix=f"name the caption column one of {', '.join(CAPTION_COLUMNS)}, or pass text_column=",
        )
    records, skipped = [], _Skipped(path)
    fix = f"give every row a `file_name` and a {column!r} caption"
    for line, row in rows:
        file_name = _string(
            _require(row, "file_name", file=path, line=line, fix=fix),
            file=path,
            line=line,
            field="file_name",
            fix="give the image's path relative to the folder",
        )
        captions = _texts(_require(row, column, file=path, line=line, fix=fix), file=path, line=line, field=column)
        if not captions:
            skipped.add(line)
            continue
        records.append({"image": str(directory / file_name), "text": captions[0], "references": captions})
    skipped.finish(records, len(rows), fix=f"write a non-empty {column!r} caption for each image")
    return _readable_or_fail(records, path)


def _readable_or_fail(records: list[dict], source: str | Path) -> list[dict]:
    kept = keep_readable(records, str(source))
    if records and not kept:
        raise DataError(
            f"none of the {len(records)} images could be read",
            file=source,
            fix="check that the file names point at image files (relative to the folder or image_root=)",
        )
    return kept


def _identifier(item: dict, field: str, path: Path, where: str, fix: str) -> int | str:
    """A COCO id field: present, and a number or a string."""
    value = _require(item, field, file=path, line=where, fix=fix)
    if not isinstance(value, (int, str)):
        raise DataError("must be a number or string", file=path, line=where, field=field, value=value)
    return value


def _coco(data: dict, path: Path, root: Path, skipped: _Skipped) -> tuple[list[dict], int]:
    annotations = data["annotations"]
    if not isinstance(annotations, list):
        raise DataError("must be a list", file=path, field="annotations", value=annotations, fix="see the COCO format")
    by_id: dict[Any, list[str]] = {}
    for i, annotation in enumerate(annotations):
        where = f"annotations[{i}]"
        annotation = _object(annotation, file=path, line=where)
        fix = 'each annotation needs "image_id" and a "caption" string'
        image_id = _identifier(annotation, "image_id", path, where, fix)
        caption = _texts(
            _require(annotation, "caption", file=path, line=where, fix=fix),
            file=path,
            line=where,
            field="caption",
            lists=False,
        )
        by_id.setdefault(image_id, []).extend(c.strip() for c in caption)
    records = []
    for i, image in enumerate(data["images"]):
        where = f"images[{i}]"
        image = _object(image, file=path, line=where)
        fix = 'each image needs an "id" and a "file_name"'
        image_id = _identifier(image, "id", path, where, fix)
        file_name = _string(
            _require(image, "file_name", file=path, line=where, fix=fix),
            file=path,
            line=where,
            field="file_name",
            fix="give the image's path relative to image_root",
        )
        captions = by_id.get(image_id, [])
        if captions:
            records.append({"image": str(root / file_name), "text": captions[0], "references": captions})
        else:
            skipped.add(f"{where} (id {image_id!r}: no non-empty caption)")
    return records, len(data["images"])


def _karpathy(data: dict, path: Path, root: Path, split: str | None, skipped: _Skipped) -> tuple[list[dict], int]:
    records, total = [], 0
    for i, image in enumerate(data["images"]):
        where = f"images[{i}]"
        image = _object(image, file=path, line=where)
        if split is not None and image.get("split") != split:
            continue
        total += 1
        fix = 'each image needs a "filename" and "sentences": [{"raw": caption}, ...]'
        filename = _string(
            _require(image, "filename", file=path, line=where, fix=fix),
            file=path,
            line=where,
            field="filename",
            fix="give the image's file name",
        )
        filepath = image.get("filepath", "")
        if not isinstance(filepath, str):
            raise DataError("must be a string", file=path, line=where, field="filepath", value=filepath, fix=fix)
        sentences = image.get("sentences", [])
        if not isinstance(sentences, list):
            raise DataError("must be a list", file=path, line=where, field="sentences", value=sentences, fix=fix)
        captions = []
        for j, sentence in enumerate(sentences):
            at = f"{where}.sentences[{j}]"
            sentence = _object(sentence, file=path, line=at)
            raw = _require(sentence, "raw", file=path, line=at, fix=fix)
            captions += [c.strip() for c in _texts(raw, file=path, line=at, field="raw", lists=False)]
        if captions:
            records.append({"image": str(root / filepath / filename), "text": captions[0], "references": captions})
        else:
            skipped.add(f"{where} ({filename}: no non-empty sentence)")
    if split is not None and total == 0:
        splits = sorted({str(image.get("split")) for image in data["images"] if isinstance(image, dict)})
        raise DataError(f"no images in split {split!r}", file=path, fix=f"use one of the splits: {splits}")
    return records, total


def load_coco_json(path: str | Path, image_root: str | Path | None = None, split: str | None = None) -> list[dict]:
    r"""
    Load captions from COCO annotations (`images` + `annotations`) or the Karpathy split file (`images` with
    `sentences`, `split`, optional `filepath`). One record per image, all its captions kept as references.

    Args:
        path: the JSON file.
        image_root (*optional*): folder the file names are relative to; defaults to the JSON's folder.
        split (*optional*): Karpathy split to keep (`train`, `val`, `test`, `restval`).

    Raises:
        `DataError`: a file that is not UTF-8 or not valid JSON (with its line), a missing or mistyped field (with its
        JSON path, e.g. `annotations[12]`), or no image with a caption. Images without a non-empty caption are skipped
        with a warning; so are unreadable images.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    data = parse_json(read_text(path), path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            "expected COCO or Karpathy caption JSON with an `images` list",
            file=path,
            field="images",
            value=data.get("images") if isinstance(data, dict) else data,
            fix='write {"images": [...], "annotations": [...]} (COCO) or {"images": [{"sentences": ...}]} (Karpathy)',
        )
    skipped = _Skipped(path)
    if "annotations" in data:  # COCO: captions live in `annotations`, keyed by image id
        records, total = _coco(data, path, root, skipped)
    else:  # Karpathy
        records, total = _karpathy(data, path, root, split, skipped)
    skipped.finish(records, total, fix="give every image at least one non-empty caption")
    return _readable_or_fail(records, path)


def load_text_pairs(path: str | Path, source_key: str = "source", target_key: str = "target") -> list[dict]:
    r"""
    Load text-to-text pairs from JSONL, one `{"source": ..., "target": ...}` object per line (the target may be a list
    of reference strings; the first is trained on).

    Args:
        path: the JSONL file.
        source_key / target_key: field names.

    Raises:
        `DataError`: a line that is not a JSON object, a missing field, a source that is not a string or a target that
        is not a string (or list of strings), a file that is not UTF-8, or no pair left. Pairs with an empty source or
        target are skipped with a warning.
    """
    path = Path(path)
    rows = _read_jsonl(path)
    records, skipped = [], _Skipped(path)
    fix = f"write one {{{source_key!r}: text, {target_key!r}: text}} object per line"
    for line, row in rows:
        missing = [key for key in (source_key, target_key) if key not in row]
        if missing:
            error = DataError(
                f"expected keys {source_key!r} and {target_key!r}, got {sorted(map(str, row))}",
                file=path,
                line=line,
                fix=fix + " (or pass source_key= / target_key=)",
            )
            error.field = missing[0]
            raise error
        source = _require(row, source_key, file=path, line=line, fix=fix)
        sources = _texts(source, file=path, line=line, field=source_key, lists=False)
        target = _require(row, target_key, file=path, line=line, fix=fix)
        targets = _texts(target, file=path, line=line, field=target_key)
        if not sources or not targets:
            skipped.add(line)
            continue
        records.append({"source": source, "text": targets[0], "references": targets})
    return skipped.finish(records, len(rows), fix=fix)


def from_hf_dataset(
    dataset: Iterable[dict], image_column: str = "image", text_column: str = "text", source_column: str | None = None
) -> list[dict]:
    r"""
    Records from any `datasets.Dataset` (or iterable of dicts).

    Args:
        dataset: rows with an image (or source text) column and a target text column.
        image_column: the image column (PIL images, paths, or `{"bytes", "path"}` dicts).
        text_column: the target column (a string, or a list of reference strings).
        source_column (*optional*): for text-to-text, the source text column (then `image_column` is ignored).

    Raises:
        `DataError`: a row without the columns or with a mistyped target (named by row index), or no row left. Rows
        with an empty target are skipped with a warning; so are unreadable images.
    """
    records, skipped, total = [], _Skipped("dataset"), 0
    input_column = source_column or image_column
    fix = f"every row needs {input_column!r} and a {text_column!r} caption string (or list of strings)"
    for index, row in enumerate(dataset):
        total += 1
        where = f"row {index}"
        row = _object(row, file="dataset", line=where)
        target = _require(row, text_column, file="dataset", line=where, fix=fix)
        texts = _texts(target, file="dataset", line=where, field=text_column)
        value = _require(row, input_column, file="dataset", line=where, fix=fix)
        if source_column is not None and not _texts(value, file="dataset", line=where, field=input_column, lists=False):
            texts = []
        if not texts:
            skipped.add(where)
            continue
        record = {"text": texts[0], "references": texts}
        record["source" if source_column is not None else "image"] = value
        records.append(record)
    skipped.finish(records, total, fix=fix)
    return _readable_or_fail(records, "dataset")
