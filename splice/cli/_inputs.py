"""Command-line inputs: image files, folders and globs expanded to paths."""

from __future__ import annotations

import glob
from pathlib import Path

from ..data.io import IMAGE_SUFFIXES


def expand_inputs(inputs: list[str]) -> list[Path]:
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
