"""bench.py's results: one `Row` per timed comparison, the markdown tables, the notes under them and the JSON rows.

Ratios are transformers median / splice median (> 1: splice faster); `TARGETS` and `MFU_TARGET` are what a row is
judged against (benchmarks/README.md).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

TARGETS = {"train": 1.0, "frozen": 3.0, "greedy-1": 2.0, "beam-4": 1.5}
MFU_TARGET = 0.5


def load_average() -> float | None:
    """1-minute load average; this run itself contributes about one per busy thread."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


@dataclass
class Row:
    size: str
    key: str
    name: str
    reference: list[float]  # transformers (or, for injection rows, the bare Llama decoder) seconds per repeat
    spliced: list[float]
    target: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Read when the row finishes: well above the run's own thread count means other processes competed for the cores.
    load_after: float | None = field(default_factory=load_average)

    @property
    def ratio(self) -> float:
        return statistics.median(self.reference) / statistics.median(self.spliced)


def verdict(row: Row) -> str:
    if row.target is None:
        return ""
    return "yes" if row.ratio >= row.target else "no"


def table(rows: list[Row]) -> str:
    lines = [
        "| size | benchmark | transformers s | splice s | ratio | target | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        target = f">= {row.target:g}x" if row.target is not None else ""
        lines.append(
            f"| {row.size} | {row.name} | {statistics.median(row.reference):.4f} | "
            f"{statistics.median(row.spliced):.4f} | {row.ratio:.2f}x | {target} | {verdict(row)} |"
        )
    return "\n".join(lines)


def add_mfu(rows: list[Row], peak: float) -> None:
    """Model FLOPs utilisation of both arms of the train-step rows, against the run's best matmul throughput."""
    for row in rows:
        if row.key == "train":
            flops = row.extra["model_flops_per_step"]
            row.extra["mfu_transformers"] = flops / statistics.median(row.reference) / peak
            row.extra["mfu_splice"] = flops / statistics.median(row.spliced) / peak


def mfu_table(rows: list[Row], peak: float) -> str:
    lines = [
        f"Training MFU (train step row; model FLOPs / step time / matmul peak {peak / 1e9:.1f} GFLOP/s, the best of "
        "the start and end measurements):",
        "",
        "| size | model GFLOP/step | transformers MFU | splice MFU | target | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if row.key != "train":
            continue
        met = "yes" if row.extra["mfu_splice"] >= MFU_TARGET else "no"
        lines.append(
            f"| {row.size} | {row.extra['model_flops_per_step'] / 1e9:.1f} | {row.extra['mfu_transformers']:.1%} | "
            f"{row.extra['mfu_splice']:.1%} | >= {MFU_TARGET:.0%} | {met} |"
        )
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    lines = ["Ratios are transformers median / splice median (> 1: splice faster)."]
    for row in rows:
        if row.key == "frozen":
            build = statistics.median(row.extra["cache_build_seconds"])
            lines.append(f"[{row.size}] splice's two-epoch time includes building the feature cache ({build:.3f} s).")
    split = [r for r in rows if "ratio_onednn_off" in r.extra]
    if split:
        lines.append(
            "Generation with oneDNN off (LM head on F.linear; beam search still skips the cross-attention reorder), "
            "ratio: " + "; ".join(f"{r.size} {r.key} {r.extra['ratio_onednn_off']:.2f}" for r in split) + "."
        )
    busy = [r for r in rows if r.load_after is not None and r.load_after > torch.get_num_threads() + 1]
    if busy:
        lines.append(
            "Other processes competed for the CPU (1-min load average above threads + 1) during: "
            + "; ".join(f"{r.size} {r.key} ({r.load_after:.1f})" for r in busy)
            + ". Treat those rows with suspicion or re-run on an idle machine."
        )
    lines.append(
        "Injected rows: the transformers column is the bare Llama decoder alone, the splice column the same decoder "
        "with injected cross-attention reading precomputed encoder outputs; ratio < 1 is the injection's overhead."
    )
    return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    # For the injected rows the "transformers" arm is the bare Llama decoder (see the notes).
    data["transformers_seconds"] = data.pop("reference")
    data["splice_seconds"] = data.pop("spliced")
    data["load_average_1min_after"] = data.pop("load_after")
    data.update(
        transformers_median=statistics.median(row.reference),
        splice_median=statistics.median(row.spliced),
        ratio=row.ratio,
        met=verdict(row) or None,
    )
    return data
