"""Captions on disk: `captions.jsonl` (one `{"caption", "group"}` a line, in index order) beside `captions.offsets`,
the byte offset of each line (little-endian int64, one more than there are lines), both memory-mapped, so a caption is
read when retrieved and the captions of a large datastore never load into memory.

[`CaptionWriter`] appends batches of captions and their offsets; [`CaptionFile`] reads line `i` on demand, and its
`captions` and `groups` are sequences over the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OFFSETS_SUFFIX = ".offsets"
OFFSET_DTYPE = np.dtype("<i8")


def offsets_path(captions_path: str | os.PathLike) -> Path:
    """Where the offsets of a captions file live: `captions.jsonl` -> `captions.offsets`."""
    return Path(captions_path).with_suffix(OFFSETS_SUFFIX)


class CaptionWriter:
    r"""
    Appends captions to a `captions.jsonl` file and their line offsets to its `captions.offsets`.

    Args:
        path (`str` or `os.PathLike`): the captions file (replaced if it exists).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._lines = open(self.path, "wb")  # noqa: SIM115 -- closed by `close`, after the last batch
        self._offsets = open(offsets_path(self.path), "wb")  # noqa: SIM115
        self._end = 0
        self._offsets.write(np.zeros(1, OFFSET_DTYPE).tobytes())

    def write(self, captions: Sequence[str], groups: Sequence[str | None]) -> bytes:
        r"""
        Append a batch.

        Args:
            captions (`Sequence[str]`): the captions.
            groups (`Sequence[str | None]`): the group of each caption.

        Returns:
            `bytes`: the lines written (e.g. to fingerprint them).
        """
        lines = [(json.dumps({"caption": c, "group": g}) + "\n").encode() for c, g in zip(captions, groups)]
        ends = self._end + np.cumsum([len(line) for line in lines], dtype=np.int64)  # [B]
        data = b"".join(lines)
        self._lines.write(data)
        self._offsets.write(ends.astype(OFFSET_DTYPE).tobytes())
        self._end += len(data)
        self.count += len(lines)
        return data

    def close(self) -> None:
        """Flush and close both files."""
        self._lines.close()
        self._offsets.close()


class CaptionFile:
    r"""
    The captions and groups of a `captions.jsonl` with its `captions.offsets`, read line by line through memory maps.

    Args:
        path (`str` or `os.PathLike`): the captions file.
        count (`int`): the number of captions the datastore holds (from `datastore.json`), checked against the files.
    """

    def __init__(self, path: str | os.PathLike, count: int):
        self.path = Path(path)
        offsets = offsets_path(self.path)
        for needed in (self.path, offsets):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"datastore file {str(needed)!r} is missing; copy the whole datastore directory, or rebuild it "
                    "with `splice datastore build`"
                )
        self._offsets = np.memmap(offsets, OFFSET_DTYPE, "r")
        size = self.path.stat().st_size
        if len(self._offsets) != count + 1 or self._offsets[0] != 0 or self._offsets[-1] != size:
            raise ValueError(
                f"datastore file {str(offsets)!r} does not match {self.path.name} ({len(self._offsets) - 1} offsets "
                f"ending at byte {int(self._offsets[-1])}; expected {count} lines, {size} bytes): the files are "
                "truncated or come from different builds; rebuild with `splice datastore build`"
            )
        self._lines = np.memmap(self.path, np.uint8, "r") if size else np.zeros(0, np.uint8)
        self.captions = _Field(self, "caption")
        self.groups = _Field(self, "group")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def row(self, i: int) -> dict[str, Any]:
        """Line `i` as `{"caption", "group"}`."""
        line = self._lines[self._offsets[i] : self._offsets[i + 1]].tobytes()
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(
                f"datastore file {str(self.path)!r}: line {i + 1} is not JSON ({line[:60]!r}); the file is corrupt, "
                "rebuild with `splice datastore build`"
            ) from None


class _Field(Sequence):
    """One field of every line of a [`CaptionFile`], as a read-only sequence."""

    def __init__(self, file: CaptionFile, name: str):
        self.file, self.name = file, name

    def __len__(self) -> int:
        return len(self.file)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"caption {i} of {len(self)}")
        return self.file.row(i % len(self))[self.name]
