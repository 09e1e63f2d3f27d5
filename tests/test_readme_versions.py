"""The README's compatibility table against what is installed: `.ci/run` runs the suite in a venv of the newest releases
and in one of pyproject's floors, so in each every installed version in the table is its "newest" or its "floor"
column, and every floor column is pyproject's `>=` floor. A release the table does not name fails here."""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.compile(r"\d+(?:\.\d+)+")


def table() -> dict[str, tuple[str, str]]:
    """`{distribution: (floor, newest)}` from the README's compatibility table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = text.split("| dependency | floor (tested) | newest (tested", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    found = {}
    for row in rows:
        name, floor, newest = (cell.strip() for cell in row.strip("|").split("|"))
        for distribution in name.split(" (")[0].split(" / "):
            found[distribution.strip()] = (VERSION.search(floor)[0], VERSION.search(newest)[0])
    return found


def floors() -> dict[str, str]:
    """pyproject's `>=` floors (dependencies and extras), as `.ci/floors.py` pins them (read without tomllib: 3.10)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return dict(re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;"\s]+)', text))


def test_the_compatibility_table_names_the_installed_releases():
    rows = table()
    assert {"transformers", "torch", "peft", "accelerate", "datasets"} <= rows.keys()
    for distribution, (floor, newest) in rows.items():
        try:
            installed = metadata.version(distribution).split("+")[0]  # 2.13.0+cpu: the release is 2.13.0
        except metadata.PackageNotFoundError:
            continue  # an extra this venv does not install (e.g. tensorflow-cpu off Linux)
        assert installed in (floor, newest), (
            f"README's compatibility table: {distribution} floor {floor}, newest {newest}; installed {installed}. "
            "Update the table (the versions `.ci/run` prints after `resolved:`)."
        )


def test_the_table_floors_are_pyproject_floors():
    declared = floors()
    for distribution, (floor, _) in table().items():
        if distribution in declared:
            assert floor == declared[distribution], (distribution, floor, declared[distribution])
