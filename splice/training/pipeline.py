"""`splice train`: encoder + decoder + conditioning + freeze policy + data → `Seq2SeqTrainer`, then evaluation.

Runs unchanged on one process, under `torchrun --nproc_per_node N` and under `accelerate launch` (CPU: gloo).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
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
from ..data import SpliceCollator, load_coco_json, load_imagefolder, load_text_pairs, open_image
from ..data.builtin import make_dataset, train_tokenizer
from ..inference import generate_for_records
from ..models import EncoderDecoderModel, SmallCapModel, SpliceModel, VisionEncoderDecoderModel
from ..processing import SpliceProcessor
from ..retrieval import Datastore, Embedder, frozen_encoder_embedder, retrieve_cached
from .config import PRESETS, TASKS, ConfigError, TrainConfig, data_task, loading
from .feature_cache import FeatureCache, cached_batch, content_key
from .freezing import apply_freeze_policy, trainable_counts
from .lora import apply_lora
from .metrics import build_compute_metrics, caption_metrics, ocr_metrics
from .trainer import SpliceTrainer

logger = logging.getLogger(__name__)


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
        return [{"image": e.image, "text": e.caption, "references": e.references} for e in examples]
    path = Path(source)
    if path.is_dir():
        return load_imagefolder(path)
    if path.suffix == ".jsonl":
        return load_text_pairs(path)
    if path.suffix == ".json":
        return load_coco_json(path)
    raise ValueError(
        f"data={source!r} is not a data source: use builtin:shapes, builtin:ocr, an image folder with metadata.jsonl "
        "or metadata.csv, a COCO/Karpathy .json file, or a .jsonl file of source/target pairs."
    )


def infer_task(config: TrainConfig) -> str:
    """`config.task`, else the task the data implies (`TrainConfig` checks that a given task fits the data)."""
    if config.task is not None:
        if config.task not in TASKS:
            raise ConfigError(f"task={config.task!r} is not one of {TASKS}.")
        return config.task
    return data_task(config.data)


def build_tokenizer(config: TrainConfig, records: list[dict], task: str):
    """The tokenizer given, else the decoder checkpoint's, else one trained on the training targets."""
    if config.tokenizer is not None:
        with loading("tokenizer", config.tokenizer, "tokenizer"):
            return AutoTokenizer.from_pretrained(config.tokenizer)
    if isinstance(config.decoder, str):
        with loading("decoder", config.decoder, "tokenizer"):
            return AutoTokenizer.from_pretrained(config.decoder)
    return train_tokenizer([r["text"] for r in records], kind="char" if task == "ocr" else "word")


def _part(spec: str | dict, auto_class: Any, name: str = "encoder", **config_overrides: Any):
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
    """The composite model, its vocabulary sized to the tokenizer and its special tokens taken from it."""
    if config.preset is not None and config.preset not in PRESETS:
        raise ValueError(f"preset={config.preset!r} is not known; the presets are: {', '.join(PRESETS)}.")
    if config.preset == "smallcap":
        model_class = SmallCapModel
    else:
        model_class = EncoderDecoderModel if task == "text" else VisionEncoderDecoderModel
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
    extra = {"retrieval_k": config.retrieval_k} if config.preset == "smallcap" else {}
    model = model_class.from_encoder_decoder_pretrained(
        encoder_model=encoder, decoder_model=decoder, conditioning=config.conditioning, **extra, **config.model_kwargs
    )
    if len(tokenizer) > model.config.decoder.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.configure_special_tokens(tokenizer)
    return model


def build_image_processor(config: TrainConfig, model: SpliceModel):
    if isinstance(config.encoder, str):
        with loading("encoder", config.encoder, "image processor"):
            return AutoImageProcessor.from_pretrained(config.encoder)
    from transformers import ViTImageProcessor  # imported here: accessing it logs a note when torchvision is absent

    size = getattr(model.config.encoder, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def derive_max_new_tokens(collator: SpliceCollator, records: list[dict]) -> int:
    """The longest training target in tokens (EOS included): generation never needs more, and is never cut at 20."""
    return max(len(collator.target_ids(r["text"])) for r in records)


def train(config: TrainConfig) -> dict[str, float]:
    r"""
    Train and evaluate; save the model and its processor to `config.output_dir`.

    Returns:
        The held-out metrics (all references per item).
    """
    torch.manual_seed(config.seed)
    task = infer_task(config)
    records = load_records(config.data, task, config.n_train, config.seed, config.image_size, config.data_options)
    eval_source = config.eval_data or config.data
    if config.eval_data is None:
        warn_eval_data(config)
    eval_records = load_records(
        eval_source, task, config.n_eval, config.seed + 1, config.image_size, config.data_options
    )
    tokenizer = build_tokenizer(config, records, task)
    model = build_model(config, tokenizer, task)
    # Without `freeze`, the model's own default: everything trains, except in SmallCap (which freezes itself).
    counts = apply_freeze_policy(model, config.freeze) if config.freeze is not None else trainable_counts(model)
    if config.lora_rank:
        model = apply_lora(model, r=config.lora_rank)  # LoRA trains with the conditioning layers only
        counts = trainable_counts(model, verbose=False)
    encoder_frozen = not any(param.requires_grad for param in model.encoder.parameters())

    image_processor = build_image_processor(config, model) if task != "text" else None
    collator = SpliceCollator.for_model(model, tokenizer, image_processor)
    model.generation_config.max_new_tokens = config.max_new_tokens or derive_max_new_tokens(collator, records)
    model.generation_config.num_beams = config.num_beams

    prompted = config.preset == "smallcap"
    if prompted:
        add_retrieval_prompts(model, records, eval_records, config)
    args = Seq2SeqTrainingArguments(
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
        eval_strategy="no" if prompted else "epoch",
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
    if config.feature_cache and encoder_frozen and task != "text":
        collator = cache_encoder_features(model, collator, records + eval_records, config, args)
    processor = SpliceProcessor(image_processor, tokenizer) if image_processor is not None else tokenizer
    trainer = SpliceTrainer(
        model=model,
        processor=processor,
        args=args,
        train_dataset=records,
        eval_dataset=eval_records,
        data_collator=collator,
        compute_metrics=_one_reference(build_compute_metrics(tokenizer, "ocr" if task == "ocr" else "caption")),
    )
    resume = get_last_checkpoint(config.output_dir) if config.resume and os.path.isdir(config.output_dir) else None
    if config.resume and resume is None:
        raise ValueError(
            f"--resume: no checkpoint-N directory in {config.output_dir!r} to resume from. Drop --resume to start a "
            "new run there."
        )
    trainer.train(resume_from_checkpoint=resume)
    metrics = evaluate(model, eval_records, tokenizer, image_processor, task, config.batch_size)
    if trainer.is_world_process_zero():
        print(f"final held-out metrics, {references_label(eval_records)}: {metrics}", file=sys.stderr)
        model.save_pretrained(config.output_dir)
        processor.save_pretrained(config.output_dir)
        if prompted and config.retrieval_k:
            model.datastore.save(Path(config.output_dir) / "datastore")
        with open(Path(config.output_dir) / "eval_metrics.json", "w", encoding="utf-8") as f:
            json.dump(metrics | {"trainable_parameters": counts["trainable"]}, f, indent=2)
    return metrics


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
    counts = sorted({len(r.get("references") or [r["text"]]) for r in records})
    per_item = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    plural = "reference" if counts == [1] else "references"
    return f"all {per_item} {plural} per item, {len(records)} items"


def _one_reference(compute_metrics: Any) -> Any:
    """Per-epoch metrics score the single training target of each item: their names say so (`bleu4_1ref`)."""

    def labelled(eval_prediction: Any) -> dict[str, float]:
        return {f"{key}_1ref": value for key, value in compute_metrics(eval_prediction).items()}

    return labelled


def add_retrieval_prompts(model, records: list[dict], eval_records: list[dict], config: TrainConfig) -> None:
    """SmallCap: give every record the captions retrieved for its image and the prompt built from them.

    With the datastore built here from the training captions, a training image never sees its own captions (excluded
    by group); an external datastore excludes them only where records carry the matching `"group"`. Retrieval runs
    once per image and datastore, cached next to the run.
    """
    if config.retrieval_k == 0:
        for record in records + eval_records:
            record["retrieved"], record["prompt"] = [], model.prompts(None, 1)[0]
        return
    if config.datastore is not None:
        datastore = Datastore.load(config.datastore)
        groups: list[Any] = [r.get("group") for r in records]
    else:
        groups = [str(i) for i in range(len(records))]
        captions = [c for r in records for c in r.get("references") or [r["text"]]]
        caption_groups = [g for r, g in zip(records, groups) for _ in r.get("references") or [r["text"]]]
        if config.retrieval_embedder is not None:
            with loading("retrieval_embedder", config.retrieval_embedder):
                embedder = Embedder.from_pretrained(config.retrieval_embedder)
            datastore = Datastore.build(captions, embedder, caption_groups)
        else:
            images = [r["image"] for r in records for _ in r.get("references") or [r["text"]]]
            embedder = frozen_encoder_embedder(model.encoder, build_image_processor(config, model))
            datastore = Datastore.build(captions, embedder, caption_groups, key_kind="image", images=images)
    model.datastore = datastore
    cache = Path(config.output_dir) / "retrieved.json"
    for subset, exclude in ((records, groups), (eval_records, None)):
        images = [r["image"] for r in subset]
        keys = [content_key(image) for image in images]  # by content: a changed data set never reuses stale hits
        retrieved = retrieve_cached(datastore, images, keys, config.retrieval_k, exclude, cache)
        for record, captions in zip(subset, retrieved):
            record["retrieved"] = captions
            record["prompt"] = model.prompts([captions], 1)[0]


class CachedFeaturesCollator:
    r"""
    Targets from the records, encoder outputs from the feature cache: the frozen encoder does not run in training.

    Args:
        cache (`FeatureCache`): built on every record's image.
        collator (`SpliceCollator`): makes the targets.
    """

    def __init__(self, cache: Any, collator: SpliceCollator):
        self.cache, self.collator = cache, collator

    def __call__(self, records: list[dict]) -> dict[str, Any]:
        batch = self.collator.targets(records) | {"images": [r["image"] for r in records]}
        return cached_batch(self.cache, batch, items_key="images")


def cache_encoder_features(model, collator: SpliceCollator, records: list[dict], config: TrainConfig, args):
    """Encode every image once with the frozen encoder (main process first), and collate from the cache."""
    processor = collator.image_processor
    cache = FeatureCache(
        Path(config.output_dir) / "feature-cache",
        model.encoder,
        batch_size=config.batch_size,
        preprocessing=processor.to_json_string(),
    )
    with args.main_process_first(desc="encoder feature cache"):
        cache.build(
            [r["image"] for r in records],
            lambda images: processor([open_image(i) for i in images], return_tensors="pt"),
        )
    return CachedFeaturesCollator(cache, collator)


def _reporters() -> list[str]:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return []
    return ["tensorboard"]


def evaluate(model: SpliceModel, records, tokenizer, image_processor, task: str, batch_size: int = 32) -> dict:
    """Metrics of the model's generations against every reference of each record."""
    progress = partial(tqdm, desc="generating", leave=False)
    predictions = generate_for_records(model, records, tokenizer, image_processor, batch_size, progress)
    if task == "ocr":
        return ocr_metrics(predictions, [r["text"] for r in records])
    return caption_metrics(predictions, [r.get("references") or [r["text"]] for r in records])
