"""The model side of `splice serve`: what the HTTP layer and the batcher need from a model, and how one is loaded.

A backend generates for a batch of inputs that share one set of [`Settings`] and returns one [`Output`] per input, in
order. The batcher calls it from its single worker thread only, so a backend need not be thread-safe. The PyTorch
backend (`torch_backend.TorchBackend`) serves any splice composite; another runtime (e.g. onnxruntime over a
directory written by `splice export`) plugs in by adding a loader to `loading.LOADERS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Task = Literal["caption", "generate"]


@dataclass(frozen=True)
class Settings:
    """Generation settings of one request; requests with equal settings may share a batch (the batcher's key)."""

    num_beams: int = 1
    max_new_tokens: int | None = None
    heatmap: bool = False
    return_beams: bool = False  # with num_beams > 1: every beam, best first, in `Output.beams`


@dataclass
class Output:
    """One input's result: the text, its generated tokens (decoded one by one, special tokens left out) and, with
    `Settings.heatmap`, one attention grid `[rows, cols]` per token (a nested list of floats in [0, 1]); with
    `Settings.return_beams`, the `num_beams` beams, best first (the first is `text`), as `(text, score)`: the score is
    the beam's length-penalised log-probability, or `None` where the runtime gives none."""

    text: str
    tokens: list[str]
    attention: list[Any] | None = field(default=None, repr=False)
    beams: list[tuple[str, float | None]] | None = None


class HeatmapUnsupported(ValueError):
    """`heatmap=true` asked of a model (or settings) that cannot give per-token maps; the message says which can."""


class Backend(Protocol):
    """What `splice serve` needs from a model."""

    name: str  # shown in responses (`model`) and /health
    device: str
    task: Task  # "caption": image inputs (`/v1/caption`); "generate": text inputs (`/v1/generate`)
    max_new_tokens: int  # the largest `max_new_tokens` a request may ask for

    def heatmap_problem(self, settings: Settings) -> str | None:
        """Why `settings.heatmap` cannot be served (a sentence naming what can), or `None` when it can."""

    def run(self, inputs: Sequence[Any], settings: Settings) -> list[Output]:
        """Generate for a batch of PIL images (`task == "caption"`) or strings (`"generate"`), one output each.

        Each output must equal what the input alone would give with the same settings."""
