"""`TrainConfig`: everything `splice train` needs; every field is also a command-line flag and a YAML key.

Imports nothing heavy (no torch, no transformers), so the command line can build its flags cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS = ("caption", "ocr", "text")
PRESETS = ("smallcap",)


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

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML file of fields; `overrides` (e.g. from command-line flags) win."""
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; see `splice train --help`.")
        return cls(**(values | overrides))
