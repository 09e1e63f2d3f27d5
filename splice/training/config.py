"""`TrainConfig`: everything `splice train` needs; every field is also a command-line flag and a YAML key.

Imports nothing heavy (no torch, no transformers), so the command line can build its flags cheaply. Values from YAML
and from flags are coerced and range-checked in one place, `TrainConfig.validate` (run on construction): a bad value
is a `ConfigError` naming the field, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

TASKS = ("caption", "ocr", "text")
PRESETS = ("smallcap",)
# Copies of `splice.conditioning.CONDITIONINGS` and `splice.training.freezing.FREEZE_POLICIES` (importing those
# modules here would load torch for `splice --help`); tests/test_config_validation.py checks they stay equal.
CONDITIONINGS = ("native", "injected", "prefix", "auto")
FREEZE_POLICIES = ("none", "encoder", "encoder+decoder")
BUILTIN_DATA = ("shapes", "ocr")
MIN_IMAGE_SIDE = 8
IMAGEFOLDER_METADATA = ("metadata.jsonl", "metadata.csv")
# Fields naming a checkpoint or a directory (a hub id or a local path): a path that does not exist is an error here.
_CHECKPOINT_FIELDS = ("encoder", "decoder", "tokenizer", "datastore", "retrieval_embedder")


class ConfigError(ValueError):
    """A `TrainConfig` field (or a command-line flag) has a value outside what it accepts; the message says the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _error(name: str, value: Any, allowed: str, example: Any) -> ConfigError:
    flag = f"{_flag(name)} {example}" + (f" or {_flag(name)} '[160, 32]'" if name == "image_size" else "")
    return ConfigError(f"{name}={value!r}: {allowed}; pass e.g. {flag} (YAML: `{name}: {example}`).")


class NumberField(NamedTuple):
    """What a numeric field accepts, and an example value for its error message."""

    kind: type  # int or float
    low: float  # the lower bound
    example: Any
    low_included: bool = True
    high: float | None = None  # the upper bound (excluded), or none
    optional: bool = False  # whether None (not set) is allowed


_NUMBERS: dict[str, NumberField] = {
    "epochs": NumberField(float, low=0, low_included=False, example=3),
    "batch_size": NumberField(int, low=1, example=32),
    "learning_rate": NumberField(float, low=0, low_included=False, example="5e-4"),
    "weight_decay": NumberField(float, low=0, example=0.01),
    "warmup_ratio": NumberField(float, low=0, high=1, example=0.05),
    "n_train": NumberField(int, low=1, example=2000),
    "n_eval": NumberField(int, low=1, example=200),
    "max_new_tokens": NumberField(int, low=1, optional=True, example=32),
    "num_beams": NumberField(int, low=1, example=4),
    "lora_rank": NumberField(int, low=0, example=8),
    "seed": NumberField(int, low=0, high=2**32, example=0),
    "logging_steps": NumberField(int, low=1, example=25),
    "save_total_limit": NumberField(int, low=1, example=2),
    "retrieval_k": NumberField(int, low=0, example=4),
}
_CHOICES: dict[str, tuple[tuple[str, ...], bool]] = {  # field: (choices, None allowed)
    "conditioning": (CONDITIONINGS, False),
    "freeze": (FREEZE_POLICIES, True),
    "task": (TASKS, True),
    "preset": (PRESETS, True),
}
_BOOLS = ("bf16", "feature_cache", "resume")
_STRINGS = ("data", "output_dir")
_OPTIONAL_STRINGS = ("eval_data", "tokenizer", "datastore", "retrieval_embedder")
_MAPPINGS = ("model_kwargs", "data_options")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _range_text(kind: type, low: float, closed: bool, high: float | None) -> str:
    what = "an integer" if kind is int else "a number"
    bound = f"{'≥' if closed else '>'} {_number_text(low)}"
    return f"must be {what} {bound}" + (f" and < {_number_text(high)}" if high is not None else "")


def _number_text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def coerce_number(name: str, value: Any) -> int | float | None:
    """`value` as the field's kind (numbers given as strings parsed: `"1e-3"` → 0.001), range-checked."""
    field = _NUMBERS[name]
    kind, example, optional = field.kind, field.example, field.optional
    allowed = _range_text(kind, field.low, field.low_included, field.high) + (" (or not set)" if optional else "")
    if value is None and optional:
        return None
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _error(name, value, allowed, example) from None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise _error(name, value, allowed, example)
    if kind is int:
        if not float(number).is_integer():
            raise _error(name, value, allowed + ", not a fraction", example)
        number = int(number)
    else:
        number = float(number)
    low, high = field.low, field.high
    if number < low or (number == low and not field.low_included) or (high is not None and number >= high):
        raise _error(name, value, allowed, example)
    return number


def coerce_image_size(value: Any) -> int | list[int] | None:
    """`None`, a square side (`int` ≥ 8, or its digits) or `[width, height]` (each ≥ 8)."""
    allowed = f"must be an integer ≥ {MIN_IMAGE_SIDE} (a square side) or [width, height] of such integers"

    def side(item: Any) -> int:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item.strip())
        if isinstance(item, bool) or not isinstance(item, int) or item < MIN_IMAGE_SIDE:
            raise _error("image_size", value, allowed, 64)
        return item

    if value is None:
        return None
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise _error("image_size", value, allowed + f" (got {len(value)} numbers, not 2)", 64)
        return [side(item) for item in value]
    return side(value)


def data_task(source: str) -> str:
    """The task a data source implies: `"ocr"` for `builtin:ocr`, `"text"` for `.jsonl` pairs, else `"caption"`."""
    if source == "builtin:ocr":
        return "ocr"
    return "text" if source.endswith(".jsonl") else "caption"


def check_choice(name: str, value: Any) -> None:
    """`value` is one of the choices of field `name` (`conditioning`, `freeze`, `task`, `preset`), or not set."""
    choices, optional = _CHOICES[name]
    if not (value is None and optional) and value not in choices:
        raise ConfigError(
            f"{name}={value!r}: must be one of {', '.join(choices)}"
            f"{' (or not set)' if optional else ''}; pass e.g. {_flag(name)} {choices[0]}."
        )


def not_a_data_source(name: str, source: str) -> ConfigError:
    """The error for a `source` of no known kind (not built-in, not a folder, `.json` or `.jsonl`)."""
    return ConfigError(
        f"{name}={source!r} is not a data source: use builtin:shapes, builtin:ocr, an image folder with "
        "metadata.jsonl or metadata.csv, a COCO/Karpathy .json file, or a .jsonl file of source/target pairs."
    )


def check_data_source(name: str, source: str) -> None:
    """`source` (the value of field or flag `name`) names built-in data, or an existing folder, `.json` or `.jsonl`."""
    if source.startswith("builtin:"):
        if source.split(":", 1)[1] not in BUILTIN_DATA:
            raise ConfigError(
                f"{name}={source!r}: unknown built-in data; the built-in data sets are "
                f"{', '.join('builtin:' + b for b in BUILTIN_DATA)}."
            )
        return
    path = Path(source)
    if not path.is_dir() and path.suffix not in (".json", ".jsonl"):
        raise not_a_data_source(name, source)
    if not path.exists():
        raise ConfigError(f"{name}={source!r}: no such file or folder; check the path ({_flag(name)}).")
    if path.is_dir() and not any((path / metadata).is_file() for metadata in IMAGEFOLDER_METADATA):
        raise ConfigError(
            f"{name}={source!r}: the image folder has neither {' nor '.join(IMAGEFOLDER_METADATA)}; add "
            f'{IMAGEFOLDER_METADATA[0]} with one line per image, e.g. {{"file_name": "a.png", "text": "a caption"}} '
            "(the `datasets` imagefolder convention)."
        )


def check_data(data: str, task: str | None = None, eval_data: str | None = None) -> str:
    r"""
    Check a data source, the task asked for and a held-out source; return the task (`task`, else the one `data`
    implies). The one check of `TrainConfig` (training) and `splice eval` (no training config).

    Raises:
        `ConfigError`: a source of no known kind or missing, a task that is not one of `TASKS` or does not fit the
            data (text pairs vs images), or `eval_data` of another kind than `data`.
    """
    check_data_source("data", data)
    implied = data_task(data)
    if eval_data is not None:
        check_data_source("eval_data", eval_data)
        if (data_task(eval_data) == "text") != (implied == "text"):
            kinds = ("text pairs", "images") if implied == "text" else ("images", "text pairs")
            raise ConfigError(
                f"eval_data={eval_data!r} holds {kinds[1]} but data={data!r} holds {kinds[0]}; "
                "evaluate on data of the same kind as the training data."
            )
    if task is None:
        return implied
    check_choice("task", task)
    if (task == "text") != (implied == "text"):
        holds = "text pairs" if implied == "text" else "images"
        raise ConfigError(
            f"task={task!r} does not fit data={data!r}: that data holds {holds}, which implies "
            f"task={implied!r}; pass --task {implied} or drop --task (it is inferred from the data)."
        )
    return task


def is_path(spec: str) -> bool:
    """Whether `spec` can only be a local path, not a hub id (`name` or `namespace/name`)."""
    return (
        spec in (".", "..")
        or spec.startswith(("/", "./", "../", "~"))
        or "\\" in spec
        or spec.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:", spec))  # a Windows drive
    )


def missing_path(name: str, spec: Any, where: str | None = None) -> ConfigError | None:
    """The error for a `spec` (the value of field or flag `name`; `where`: how the user gave it, default the flag)
    that can only be a local path, and does not exist."""
    if not isinstance(spec, str) or not is_path(spec) or Path(spec).expanduser().exists():
        return None
    parent = next((p for p in Path(spec).expanduser().absolute().parents if p.is_dir()), Path("/"))
    nearest = f" (the nearest existing folder is {str(parent)!r})" if parent != Path("/") else ""
    return ConfigError(f"{name}={spec!r}: no such file or directory{nearest}; check the path ({where or _flag(name)}).")


def load_failure(name: str, spec: Any, error: BaseException, what: str = "model") -> str:
    """One line saying why `spec` (the value of field or flag `name`) could not be loaded, and what to do."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    missing = missing_path(name, spec)
    if missing is not None:
        return str(missing)
    if isinstance(spec, str) and Path(spec).is_dir():
        return f"{name}={spec!r}: the folder has no loadable {what} ({first})"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or "connect" in first.lower():
        return (
            f"{name}={spec!r}: {what} not found locally and the hub is unreachable (HF_HUB_OFFLINE=1?); download it "
            f"once online, or pass a local directory (or, for --encoder/--decoder, a config dict with model_type)"
        )
    if isinstance(spec, str) and not Path(spec).exists() and "repo id" in first.lower():
        return f"{name}={spec!r}: no such local directory, and not a hub id ('name' or 'namespace/name'); check it"
    return f"{name}={spec!r}: cannot load the {what}: {first}"


def check_resume(config: TrainConfig) -> None:
    """With `resume`: `output_dir` holds a `checkpoint-N` folder (checked before anything is loaded or built).

    Raises:
        `ConfigError`: naming the folder and the fix.
    """
    if not config.resume:
        return
    folder = Path(config.output_dir)
    found = folder.is_dir() and any(re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir() for p in folder.iterdir())
    if not found:
        raise ConfigError(
            f"resume=True: no checkpoint-N directory in {config.output_dir!r} to resume from (a run saves one per "
            "epoch); drop --resume to start a new run there, or pass the --output-dir of the run to continue."
        )


@contextmanager
def loading(name: str, spec: Any, what: str = "model") -> Iterator[None]:
    """Turn an `OSError` from `from_pretrained(spec)` into a one-line `ConfigError` naming `name` and `spec`."""
    try:
        yield
    except OSError as error:
        raise ConfigError(load_failure(name, spec, error, what)) from error


@dataclass
class TrainConfig:
    r"""
    Everything `splice train` needs; every field is also a command-line flag and a YAML key.

    Args:
        encoder: a checkpoint (hub id or directory), or a config dict with `model_type` to start from random weights.
        decoder: same, for the decoder.
        conditioning: `"auto"`, `"native"`, `"injected"` or `"prefix"`.
        model_kwargs: more composite config fields (e.g. `cross_attention_reduce_factor`, `prefix_length`).
        freeze: `"none"`, `"encoder"` or `"encoder+decoder"` (only the conditioning layers train); default `"none"`,
            or `"encoder+decoder"` for the SmallCap preset.
        lora_rank: LoRA rank on the decoder (0: no LoRA).
        data: `builtin:shapes`, `builtin:ocr`, an image folder, a COCO/Karpathy JSON, or a text-pair JSONL.
        eval_data: same; for built-in data, held-out scenes are generated with another seed when omitted.
        task: `"caption"`, `"ocr"` or `"text"`; inferred from the data when omitted.
        data_options: options of the built-in generator (e.g. `{"domain": "b"}` for shapes).
        n_train, n_eval: sizes of generated built-in data.
        image_size: built-in data's image size (`int` or `[width, height]`; each task has a default).
        tokenizer: a tokenizer directory or hub id; when omitted, the decoder's own, else one trained on the data.
        bf16: train under bfloat16 autocast (the weights, the optimizer and the saved model stay float32); on a CPU
            with AVX-512 BF16 or AMX, a step of the OCR demo takes about 0.6 times as long.
        max_new_tokens: generation length; derived from the longest training target when omitted.
        feature_cache: cache the frozen encoder's outputs on disk (only when the encoder is frozen).
        resume: continue from the last checkpoint in `output_dir`.
        preset: `"smallcap"`: [`SmallCapModel`], frozen encoder and decoder, retrieval-augmented prompts.
        datastore: SmallCap: a datastore directory (`splice datastore build`); when omitted, one is built from the
            training captions (image keys embedded by the frozen encoder, or text keys with `retrieval_embedder`).
        retrieval_embedder: SmallCap: a CLIP-style checkpoint for text keys when the datastore is built here.
        retrieval_k: SmallCap: retrieved captions per image (0: no retrieval, the prompt is "This image shows ").
    """

    encoder: str | dict = "google/vit-base-patch16-224-in21k"
    decoder: str | dict = "openai-community/gpt2"
    conditioning: str = "auto"
    model_kwargs: dict = field(default_factory=dict)
    freeze: str | None = None
    lora_rank: int = 0
    data: str = "builtin:shapes"
    eval_data: str | None = None
    task: str | None = None
    data_options: dict = field(default_factory=dict)
    n_train: int = 2000
    n_eval: int = 200
    image_size: int | list[int] | None = None
    tokenizer: str | None = None
    output_dir: str = "splice-run"
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    bf16: bool = False
    max_new_tokens: int | None = None
    num_beams: int = 1
    feature_cache: bool = True
    resume: bool = False
    seed: int = 0
    logging_steps: int = 25
    save_total_limit: int = 2
    preset: str | None = None
    datastore: str | None = None
    retrieval_embedder: str | None = None
    retrieval_k: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        r"""
        Coerce every field to its type (numbers given as strings parsed) and check its range, in place.

        Raises:
            `ConfigError`: naming the first bad field, its value, what is allowed and how to fix it.
        """
        for name in _NUMBERS:
            setattr(self, name, coerce_number(name, getattr(self, name)))
        self.image_size = coerce_image_size(self.image_size)
        for name in _CHOICES:
            check_choice(name, getattr(self, name))
        for name in _BOOLS:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                value = value.strip().lower() in _TRUE
            if not isinstance(value, bool):
                raise ConfigError(
                    f"{name}={value!r}: must be true or false; pass {_flag(name)} or --no-{_flag(name)[2:]}."
                )
            setattr(self, name, value)
        for name in _STRINGS + _OPTIONAL_STRINGS:
            value = getattr(self, name)
            if not (value is None and name in _OPTIONAL_STRINGS) and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(
                    f"{name}={value!r}: must be a non-empty string (a path or name); check {_flag(name)}."
                )
        for name in _MAPPINGS:
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
                raise ConfigError(
                    f"{name}={value!r}: must be a mapping of names to values; pass e.g. {_flag(name)} "
                    '\'{"domain": "b"}\' (YAML: a nested mapping).'
                )
            setattr(self, name, dict(value))
        for name in ("encoder", "decoder"):
            value = getattr(self, name)
            fix = f"pass a checkpoint (hub id or directory) or a config dict with model_type, e.g. {_flag(name)} "
            fix += '\'{"model_type": "vit"}\'' if name == "encoder" else '\'{"model_type": "gpt2"}\''
            if isinstance(value, Mapping):
                if not isinstance(value.get("model_type"), str):
                    raise ConfigError(f"{name}={dict(value)!r}: a config dict needs a string model_type; {fix}.")
                setattr(self, name, dict(value))
            elif not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}={value!r}: must be a checkpoint or a config dict; {fix}.")
        for name in _CHECKPOINT_FIELDS:
            missing = missing_path(name, getattr(self, name))
            if missing is not None:
                raise missing
        check_data(self.data, self.task, self.eval_data)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML file of fields; `overrides` (e.g. from command-line flags) win."""
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f)
        except OSError as error:
            raise ConfigError(f"--config {str(path)!r}: cannot read it ({error.strerror or error}).") from None
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{line}: {problem}.") from None
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"{path}: the top level is a {type(values).__name__} ({values!r:.60}), not a mapping of TrainConfig "
                "fields; write one `field: value` per line, e.g. `epochs: 3`."
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted({str(key) for key in values if key not in names})
        if unknown:
            close = {key: difflib.get_close_matches(key.replace("-", "_"), names, n=1, cutoff=0.6) for key in unknown}
            hints = [(repr(m[0]) if len(unknown) == 1 else f"{m[0]!r} for {k!r}") for k, m in close.items() if m]
            guess = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ConfigError(
                f"{path}: unknown keys {unknown}{guess}; the keys are the fields `splice train --help` lists (flag "
                "--learning-rate: key learning_rate)."
            )
        return cls(**(dict(values) | overrides))
