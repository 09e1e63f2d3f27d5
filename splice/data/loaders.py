"""Loaders for the usual caption/text formats: records from an image folder, COCO/Karpathy JSON, text-pair JSONL, or
any `datasets.Dataset`.

A record is a dict: `{"image": path | bytes | PIL.Image, "text": target}` for image-to-text,
`{"source": text, "text": target}` for text-to-text; optional `"prompt"` (decoder-side prefix, e.g. SmallCap's
retrieved captions: fed to the decoder, never scored) and `"references"` (all reference captions, for metrics).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .io import keep_readable


def load_imagefolder(directory: str | Path, text_column: str | None = None) -> list[dict]:
    r"""
    Load an image folder in the `datasets` imagefolder convention: images plus `metadata.jsonl` or `metadata.csv` with a
    `file_name` column and a caption column.

    Args:
        directory: the folder.
        text_column (*optional*): caption column; defaults to the first of `text`, `caption`, `captions`, `sentence`.
    """
    directory = Path(directory)
    if (directory / "metadata.jsonl").exists():
        with open(directory / "metadata.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif (directory / "metadata.csv").exists():
        with open(directory / "metadata.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise FileNotFoundError(f"{directory} has neither metadata.jsonl nor metadata.csv (imagefolder convention).")
    if not rows:
        raise ValueError(f"{directory}: the metadata file has no rows.")
    column = text_column or next((c for c in ("text", "caption", "captions", "sentence") if c in rows[0]), None)
    if column is None or "file_name" not in rows[0]:
        raise ValueError(
            f"{directory}: metadata needs a `file_name` column and a caption column (text or caption); "
            f"got {list(rows[0])}."
        )
    records = []
    for row in rows:
        captions = row[column] if isinstance(row[column], list) else [row[column]]
        records.append({"image": str(directory / row["file_name"]), "text": captions[0], "references": captions})
    return keep_readable(records, str(directory))


def load_coco_json(path: str | Path, image_root: str | Path | None = None, split: str | None = None) -> list[dict]:
    r"""
    Load captions from COCO annotations (`images` + `annotations`) or the Karpathy split file (`images` with
    `sentences`, `split`, optional `filepath`). One record per image, all its captions kept as references.

    Args:
        path: the JSON file.
        image_root (*optional*): folder the file names are relative to; defaults to the JSON's folder.
        split (*optional*): Karpathy split to keep (`train`, `val`, `test`, `restval`).
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    images = data.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected COCO or Karpathy caption JSON with an `images` list.")
    records = []
    if "annotations" in data:  # COCO: captions live in `annotations`, keyed by image id
        by_id: dict[Any, list[str]] = {}
        for annotation in data["annotations"]:
            by_id.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        for image in images:
            captions = by_id.get(image["id"], [])
            if captions:
                records.append({"image": str(root / image["file_name"]), "text": captions[0], "references": captions})
    else:  # Karpathy
        for image in images:
            if split is not None and image.get("split") != split:
                continue
            captions = [s["raw"].strip() for s in image.get("sentences", [])]
            file = root / image.get("filepath", "") / image["filename"]
            if captions:
                records.append({"image": str(file), "text": captions[0], "references": captions})
    return keep_readable(records, str(path))


def load_text_pairs(path: str | Path, source_key: str = "source", target_key: str = "target") -> list[dict]:
    r"""
    Load text-to-text pairs from JSONL, one `{"source": ..., "target": ...}` object per line.

    Args:
        path: the JSONL file.
        source_key / target_key: field names.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if source_key not in row or target_key not in row:
                raise ValueError(f"{path}:{number}: expected keys {source_key!r} and {target_key!r}, got {list(row)}.")
            records.append({"source": row[source_key], "text": row[target_key], "references": [row[target_key]]})
    return records


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
    """
    records = []
    for row in dataset:
        texts = row[text_column] if isinstance(row[text_column], list) else [row[text_column]]
        record = {"text": texts[0], "references": texts}
        if source_column is not None:
            record["source"] = row[source_column]
        else:
            record["image"] = row[image_column]
        records.append(record)
    return keep_readable(records, "dataset")
