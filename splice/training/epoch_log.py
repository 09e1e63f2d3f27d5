"""One line per epoch in place of transformers' log dicts, on one trainer: [`log_one_line_per_epoch`] (the OCR demo)."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback


class EpochLogCallback(TrainerCallback):
    r"""
    Prints one line at each epoch's evaluation: the epoch, the training loss last logged (log it at the epoch's end,
    see `logging_steps`), the eval metrics (`eval_*_1ref`, named without the prefix and suffix) and the seconds since
    the callback was made.

    Args:
        epochs (`float`): the run's epochs, shown as `epoch 3/8`.
    """

    def __init__(self, epochs: float):
        self.epochs = epochs
        self.loss: float | None = None
        self.start = time.time()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
        metrics = {k[5:].removesuffix("_1ref"): v for k, v in logs.items() if k.endswith("_1ref")}
        if metrics and state.is_world_process_zero:
            loss = f"train loss {self.loss:.4f}, " if self.loss is not None else ""
            self.loss = None
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            seconds = time.time() - self.start
            tqdm.write(f"epoch {state.epoch:.0f}/{self.epochs:g}: {loss}eval {shown} ({seconds:.0f} s)")  # under bars


class ProgressBarsCallback(ProgressCallback):
    """transformers' progress bars without the log dicts it writes under them."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        pass


def log_one_line_per_epoch(trainer: Trainer, epochs: float) -> None:
    """
    On this trainer only: its progress bars stay, its log dicts go (`ProgressCallback`, or `PrinterCallback` when the
    bars are off), and [`EpochLogCallback`] prints one line per epoch.

    Args:
        trainer (`Trainer`): changed in place, before `train`.
        epochs (`float`): the run's epochs.
    """
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBarsCallback)
    trainer.pop_callback(PrinterCallback)
    trainer.add_callback(EpochLogCallback(epochs))
