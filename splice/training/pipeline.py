"""`splice train`: a run is built, then run.

[`build_run`] makes what a run needs, one named step each: load the data, build the tokenizer and the model, apply
the training policies (freeze, LoRA), set the generation defaults, let the preset prepare its records (SmallCap:
retrieval prompts, see `training.smallcap`), build the trainer (on cached encoder features when the encoder is frozen).
[`run_training`] trains (resuming if asked), evaluates against every reference and saves. [`train`] is the two.

Runs unchanged on one process, under `torchrun --nproc_per_node N` and under `accelerate launch` (CPU: gloo), DDP or
FSDP (`accelerate launch --config_file configs/accelerate_fsdp.yaml`; `training.fsdp`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import types
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    Seq2SeqTrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from ..conditioning import resolve_conditioning
from ..data import SpliceCollator, load_coco_json, load_imagefolder, load_text_pairs, record_references
from ..data.builtin import make_dataset, train_tokenizer
from ..data.slots import slot_metrics
from ..inference import generate_for_records
from ..models import EncoderDecoderModel, SpliceModel, VisionEncoderDecoderModel
from ..processing import SpliceProcessor, vit_image_processor_class
from ..retrieval import Datastore
from . import fsdp, smallcap
from .config import ConfigError, TrainConfig, check_resume, data_task, loading, not_a_data_source
from .feature_cache import cache_encoder_features
from .freezing import apply_freeze_policy, trainable_counts
from .lora import apply_lora
from .metrics import build_compute_metrics, caption_metrics, ocr_metrics
from .trainer import SpliceTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    r"""
    What [`build_run`] makes for one run; [`run_training`] trains, evaluates and saves it.

    Args:
        config (`TrainConfig`): the run's settings.
        task (`str`): `"caption"`, `"ocr"` or `"text"`.
        records, eval_records (`list[dict]`): the training and held-out records (SmallCap: with their prompts).
        tokenizer: the decoder's tokenizer.
        image_processor: the encoder's (`None` for text).
        model (`SpliceModel`): with its training policies applied.
        trainer (`SpliceTrainer`): set up on the records.
        trainable_parameters (`int`): after the freeze policy and LoRA.
        datastore (`Datastore`, *optional*): SmallCap's, saved with the model.
    """

    config: TrainConfig
    task: str
    records: list[dict]
    eval_records: list[dict]
    tokenizer: Any
    image_processor: Any
    model: SpliceModel
    trainer: SpliceTrainer
    trainable_parameters: int
    datastore: Datastore | None = None


def train(config: TrainConfig) -> dict[str, float]:
    r"""
    Train and evaluate; save the model and its processor to `config.output_dir`.

    Returns:
        The held-out metrics (all references per item).
    """
    return run_training(build_run(config))


def build_run(config: TrainConfig) -> TrainingRun:
    """Everything one run needs, step by step (see the module docstring); nothing trains yet. The cheap checks come
    first (`--resume` has a checkpoint; the parts' configs load; the encoder is no decoder-only LM)."""
    check_resume(config)
    check_parts(config)
    torch.manual_seed(config.seed)
    task = config.task or data_task(config.data)
    records, eval_records = load_data(config, task)
    tokenizer = build_tokenizer(config, records, task)
    model = build_model(config, tokenizer, task)
    model, trainable = apply_training_policies(model, config)
    image_processor = build_image_processor(config, model) if task != "text" else None
    collator = SpliceCollator.for_model(model, tokenizer, image_processor)
    set_generation_defaults(model, config, collator, records)
    datastore = None
    if config.preset == "smallcap":
        records, eval_records, datastore = smallcap.add_retrieval_prompts(
            model, records, eval_records, config, image_processor
        )
    args = training_arguments(config)
    if config.feature_cache and task != "text" and not any(p.requires_grad for p in model.encoder.parameters()):
        collator = cache_encoder_features(model, collator, records + eval_records, config, args)
    trainer = SpliceTrainer(
        model=model,
        processor=SpliceProcessor(image_processor, tokenizer) if image_processor is not None else tokenizer,
        args=args,
        train_dataset=records,
        eval_dataset=eval_records,
        data_collator=collator,
        compute_metrics=_one_reference(build_compute_metrics(tokenizer, "ocr" if task == "ocr" else "caption")),
    )
    return TrainingRun(
        config, task, records, eval_records, tokenizer, image_processor, model, trainer, trainable, datastore
    )


def run_training(run: TrainingRun) -> dict[str, float]:
    """Train (from the last checkpoint with `resume`), score the held-out records, save; the held-out metrics."""
    config = run.config
    resume = get_last_checkpoint(config.output_dir) if config.resume and os.path.isdir(config.output_dir) else None
    if config.resume and resume is None:
        raise ConfigError(
            f"--resume: no checkpoint-N directory in {config.output_dir!r} to resume from. Drop --resume to start a "
            "new run there."
        )
    run.trainer.train(resume_from_checkpoint=resume)
    metrics = evaluate(run.model, run.eval_records, run.tokenizer, run.image_processor, run.task, config.batch_size)
    # Sharded (FSDP): every process hands its shards to the main one, which saves the whole model.
    weights = fsdp.gather_weights(run.trainer.accelerator, run.model) if run.trainer.is_fsdp_enabled else None
    if run.trainer.is_world_process_zero():
        save_run(run, metrics, weights)
    # A launched run (torchrun, accelerate launch) ends its process group here, every process together: left to the
    # interpreter's exit, gloo's threads were torn down unjoined and a process could abort at the very end ("terminate
    # called without an active exception", SIGABRT) after a complete run. No-op in a single process.
    run.trainer.accelerator.wait_for_everyone()
    run.trainer.accelerator.end_training()
    return metrics


def save_run(run: TrainingRun, metrics: dict[str, float], weights: dict[str, torch.Tensor] | None = None) -> None:
    """Print the final metrics; save the model (`weights`: its gathered state dict, when sharded), its processor, the
    datastore (SmallCap), `eval_metrics.json` and `train_config.yaml`."""
    output_dir = Path(run.config.output_dir)
    print(f"final {metrics_label(run.config, references_label(run.eval_records))}: {metrics}", file=sys.stderr)
    run.model.save_pretrained(output_dir, state_dict=weights)
    run.trainer.processor.save_pretrained(output_dir)
    if run.datastore is not None:
        smallcap.save_datastore(run.datastore, output_dir)
    with open(output_dir / "eval_metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics | {"trainable_parameters": run.trainable_parameters}, f, indent=2)
    # The run's settings, the task resolved (`splice eval` reads it; `splice train --config` takes the file back).
    settings = dataclasses.asdict(dataclasses.replace(run.config, task=run.task, resume=False))
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")


def load_data(config: TrainConfig, task: str) -> tuple[list[dict], list[dict]]:
    """The training records and the held-out ones (`eval_data`, else built-in data with another seed, else `data`)."""
    records = load_records(config.data, task, config.n_train, config.seed, config.image_size, config.data_options)
    if config.eval_data is None:
        warn_eval_data(config)
    eval_records = load_records(
        config.eval_data or config.data, task, config.n_eval, config.seed + 1, config.image_size, config.data_options
    )
    return records, eval_records


def load_records(
    source: str, task: str, n: int, seed: int, image_size: int | list[int] | None, options: dict | None = None
) -> list[dict]:
    r"""
    Records (`{"image"|"source", "text", "references"}`) from a data source string.

    Args:
        source: `builtin:shapes`, `builtin:ocr`, an image folder, a `.json` caption file or a `.jsonl` pair file.
        task: the task (decides the built-in generator's options).
        n, seed, image_size, options: for built-in data.
    """
    if source.startswith("builtin:"):
        size = tuple(image_size) if isinstance(image_size, list) else image_size
        examples = make_dataset(source.split(":", 1)[1], n, seed=seed, image_size=size, **(options or {}))
        records = [{"image": e.image, "text": e.caption, "references": e.references} for e in examples]
        # Shapes scenes carry their true slots, so the held-out evaluation can check what the captions name.
        return [r | {"slots": e.slots} if e.slots is not None else r for r, e in zip(records, examples)]
    path = Path(source)
    if path.is_dir():
        return load_imagefolder(path)
    if path.suffix == ".jsonl":
        return load_text_pairs(path)
    if path.suffix == ".json":
        return load_coco_json(path)
    raise not_a_data_source("data", source)


def build_tokenizer(config: TrainConfig, records: list[dict], task: str) -> Any:
    """The tokenizer given, else the decoder checkpoint's, else one trained on the training targets."""
    if config.tokenizer is not None:
        with loading("tokenizer", config.tokenizer, "tokenizer"):
            return AutoTokenizer.from_pretrained(config.tokenizer)
    if isinstance(config.decoder, str):
        with loading("decoder", config.decoder, "tokenizer"):
            return AutoTokenizer.from_pretrained(config.decoder)
    return train_tokenizer([r["text"] for r in records], kind="char" if task == "ocr" else "word")


def _part(spec: str | dict, auto_class: Any, name: str = "encoder", **config_overrides: Any) -> Any:
    """A model from a checkpoint, or from random weights when `spec` is a config dict with `model_type`."""
    if isinstance(spec, dict):
        values = dict(spec)
        model_config = AutoConfig.for_model(values.pop("model_type"), **(values | config_overrides))
        return auto_class.from_config(model_config)
    with loading(name, spec):
        model_config = AutoConfig.from_pretrained(spec)
        for key, value in config_overrides.items():
            setattr(model_config, key, value)
        return auto_class.from_pretrained(spec, config=model_config)


def build_model(config: TrainConfig, tokenizer: Any, task: str) -> SpliceModel:
    """The composite model (the preset's class, else the task's), its vocabulary sized to the tokenizer and its special
    tokens taken from it."""
    if config.preset == "smallcap":
        model_class, preset_fields = smallcap.MODEL_CLASS, smallcap.model_fields(config)
    else:
        model_class, preset_fields = (EncoderDecoderModel if task == "text" else VisionEncoderDecoderModel), {}
    decoder_overrides: dict[str, Any] = {}
    if isinstance(config.decoder, dict):
        decoder_overrides["vocab_size"] = len(tokenizer)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            decoder_overrides[name] = getattr(tokenizer, name)
        decoder_config = AutoConfig.for_model(config.decoder["model_type"])
    else:
        with loading("decoder", config.decoder):
            decoder_config = AutoConfig.from_pretrained(config.decoder)
    if resolve_conditioning(config.conditioning, decoder_config) == "native":
        decoder_overrides |= {"is_decoder": True, "add_cross_attention": True}
    encoder = _part(config.encoder, AutoModel, "encoder")
    decoder = _part(config.decoder, AutoModelForCausalLM, "decoder", **decoder_overrides)
    model = model_class.from_encoder_decoder_pretrained(
        encoder_model=encoder,
        decoder_model=decoder,
        conditioning=config.conditioning,
        **preset_fields,
        **config.model_kwargs,
    )
    if len(tokenizer) > model.config.decoder.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.configure_special_tokens(tokenizer)
    return model


def apply_training_policies(model: SpliceModel, config: TrainConfig) -> tuple[SpliceModel, int]:
    """The freeze policy, then LoRA; the model and its trainable parameter count.

    Without `freeze`, the model's own default: everything trains, except in SmallCap (which freezes itself). LoRA
    trains with the conditioning layers only.
    """
    counts = apply_freeze_policy(model, config.freeze) if config.freeze is not None else trainable_counts(model)
    if config.lora_rank:
        model = apply_lora(model, r=config.lora_rank)
        counts = trainable_counts(model, verbose=False)
    return model, counts["trainable"]


def build_image_processor(config: TrainConfig, model: SpliceModel) -> Any:
    """The encoder checkpoint's image processor, else a ViT one sized to a from-scratch encoder."""
    if isinstance(config.encoder, str):
        with loading("encoder", config.encoder, "image processor"):
            return AutoImageProcessor.from_pretrained(config.encoder)
    size = getattr(model.config.encoder, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    processor_class = vit_image_processor_class()
    return processor_class(size={"height": height, "width": width}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def set_generation_defaults(
    model: SpliceModel, config: TrainConfig, collator: SpliceCollator, records: list[dict]
) -> None:
    """`max_new_tokens` (given, else the longest training target) and `num_beams` in the model's generation config."""
    model.generation_config.max_new_tokens = config.max_new_tokens or derive_max_new_tokens(collator, records)
    model.generation_config.num_beams = config.num_beams


def derive_max_new_tokens(collator: SpliceCollator, records: list[dict]) -> int:
    """The longest training target in tokens (EOS included): generation never needs more, and is never cut at 20."""
    return max(len(collator.target_ids(r["text"])) for r in records)


def training_arguments(config: TrainConfig) -> Seq2SeqTrainingArguments:
    """The `Seq2SeqTrainingArguments` of a run."""
    return Seq2SeqTrainingArguments(
        output_dir=config.output_dir,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type="cosine",
        bf16=config.bf16,
        logging_steps=config.logging_steps,
        # Prompted (SmallCap) batches teacher-force the prompt and the caption, so they are evaluated after training
        # with `model.caption`, which generates from the prompt alone.
        eval_strategy="no" if config.preset == "smallcap" else "epoch",
        save_strategy="epoch",
        save_total_limit=config.save_total_limit,
        predict_with_generate=True,
        report_to=_reporters(),
        remove_unused_columns=False,  # records are not a `datasets.Dataset`; the collator builds the inputs
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        # Launched by torchrun/accelerate on CPU: gloo is the backend that runs there.
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
        dataloader_num_workers=0,
    )


def metrics_label(config: TrainConfig, references: str) -> str:
    """What the final metrics are, e.g. `"held-out metrics, all 5 references per item, 200 items, scored on
    builtin:shapes (seed 1)"`; without `eval_data` on files, metrics on the training data, never called held-out."""
    if config.eval_data is not None:
        return f"held-out metrics, {references}, scored on {config.eval_data}"
    if config.data.startswith("builtin:"):
        return f"held-out metrics, {references}, scored on {config.data} (seed {config.seed + 1})"
    return f"metrics on the training data ({config.data}; not held-out, see --eval-data), {references}"


def check_parts(config: TrainConfig) -> None:
    """The decoder's and the encoder's configs load (checkpoints: their `config.json` alone), and the encoder is not a
    decoder-only language model (GPT-2, Llama, ...).

    Raises:
        `ConfigError`: naming the checkpoint that does not load, or the encoder's model type and what to pass instead.
    """
    from transformers.models.auto import modeling_auto as auto

    model_types = {}
    for name in ("decoder", "encoder"):
        spec = getattr(config, name)
        if isinstance(spec, dict):
            model_types[name] = spec["model_type"]
        else:
            with loading(name, spec):
                model_types[name] = AutoConfig.from_pretrained(spec).model_type
    # Decoder-only: a causal LM and nothing an encoder also is (BERT has a causal-LM head, and is a masked LM).
    also_encoder = (
        auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
        auto.MODEL_FOR_CTC_MAPPING_NAMES,
        auto.MODEL_FOR_IMAGE_MAPPING_NAMES,
    )
    model_type = model_types["encoder"]
    if model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not any(model_type in m for m in also_encoder):
        task = config.task or data_task(config.data)
        examples = "BERT, RoBERTa or T5" if task == "text" else "ViT, DeiT, Swin, ConvNeXt, DINOv2, CLIP or SigLIP"
        raise ConfigError(
            f"encoder={config.encoder!r} is a {model_type} checkpoint, a decoder-only language model (it reads "
            f"{'text' if task == 'text' else 'text, not images'}); pass an encoder as --encoder (e.g. {examples}) "
            "and give this one as --decoder."
        )


def warn_eval_data(config: TrainConfig) -> None:
    """Without `eval_data`: say once what the held-out metrics are scored on."""
    if config.data.startswith("builtin:"):
        logger.warning(
            f"eval_data not set: scoring held-out samples generated with another seed (seed {config.seed + 1}, "
            f"n_eval={config.n_eval}) from {config.data}."
        )
    else:
        logger.warning(
            f"eval_data not set: eval data = training data ({config.data}): these metrics are not held-out; pass "
            "--eval-data for a held-out score."
        )


def references_label(records: list[dict]) -> str:
    """How many references each item is scored against, e.g. `"all 5 references per item, 200 items"`."""
    counts = sorted({len(record_references(r)) for r in records})
    per_item = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    plural = "reference" if counts == [1] else "references"
    return f"all {per_item} {plural} per item, {len(records)} items"


def _one_reference(compute_metrics: Any) -> Any:
    """Per-epoch metrics score the single training target of each item: their names say so (`bleu4_1ref`)."""

    def labelled(eval_prediction: Any) -> dict[str, float]:
        return {f"{key}_1ref": value for key, value in compute_metrics(eval_prediction).items()}

    return labelled


def _reporters() -> list[str]:
    """TensorBoard when installed, writing its event files without TensorFlow: TensorBoard imports TF when it can
    (seconds of start-up and its log lines) unless `tensorboard.compat.notf` is importable, which selects its own
    TF stub (the one it uses without TF). Left alone when the process has imported TF already."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    return ["tensorboard"]


def evaluate(
    model: SpliceModel, records: list[dict], tokenizer: Any, image_processor: Any, task: str, batch_size: int = 32
) -> dict[str, float]:
    """Metrics of the model's generations against every reference of each record (and, for built-in shapes records,
    which carry `"slots"`, the slot accuracies of `splice.data.slots.slot_metrics`)."""
    progress = partial(tqdm, desc="generating", leave=False)
    predictions = generate_for_records(model, records, tokenizer, image_processor, batch_size, progress)
    if task == "ocr":
        return ocr_metrics(predictions, [r["text"] for r in records])
    metrics = caption_metrics(predictions, [record_references(r) for r in records])
    if records and all(r.get("slots") is not None for r in records):
        metrics |= slot_metrics(predictions, [r["slots"] for r in records])
    return metrics
