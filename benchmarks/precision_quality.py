"""Reduced precision on trained models: token agreement with fp32 and the demos' held-out metrics, per mode.

Run: `python benchmarks/precision_quality.py --shapes DIR --ocr DIR [--batch-size 16] [--output PATH]`, where DIR is a
model saved by `splice demo` (shapes) or `splice demo --task ocr`. Either may be left out.

Modes (splice/precision.py): fp32, bf16, fp32 + int8, bf16 + int8 (LM head and embeddings in the model's dtype), and
bf16 + int8 with the LM head in int8 too (measured, not a default). Each loads the same directory and decodes the
demo's own held-out set greedily, with the demo's generation settings, in batches of `--batch-size` (16: decoding steps
then take the int8 kernel, as at batch 1; an encoder pass and larger batches multiply the dequantized weight instead):

- shapes: the 200 held-out scenes of `splice demo` (seed 1), scored with CIDEr / BLEU-4 against all 5 references
  and the slot accuracies (`splice.data.slots`: colour, shape, place / relation, whole caption right);
- OCR: the 4 held-out sets of `splice demo --task ocr` (unseen fonts, unseen strings; `ocr_held_out_sets`), scored
  with CER / WER / exact match.

Token agreement with fp32, two ways: *free-running*, the fraction of fp32's generated positions (up to and including
its eos) where the mode generated the same id, and the fraction of whole sequences equal; *teacher-forced*, the
fraction of those positions where the mode's argmax, fed fp32's own tokens, is fp32's token (one flip early in a
free-running caption changes every later position; teacher forcing counts each decision once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_report import load_average  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import splice  # noqa: E402
from splice.cli.demo import OCR_DEMO, ocr_held_out_sets  # noqa: E402
from splice.data import record_references  # noqa: E402
from splice.data.slots import slot_metrics  # noqa: E402
from splice.inference import start_tokens  # noqa: E402
from splice.processing import decode_predictions  # noqa: E402
from splice.training.metrics import caption_metrics, ocr_metrics  # noqa: E402
from splice.training.pipeline import load_records  # noqa: E402

hf_logging.set_verbosity_error()  # transformers' load-time warnings would interleave with the results, as in bench.py
hf_logging.disable_progress_bar()  # "Loading weights" bars on every from_pretrained

# name -> (dtype, quantize, LM head in int8 too)
MODES = {
    "fp32": ("fp32", None, False),
    "bf16": ("bf16", None, False),
    "fp32 + int8": ("fp32", "int8", False),
    "bf16 + int8": ("bf16", "int8", False),
    "bf16 + int8, LM head int8 (not a default)": ("bf16", "int8", True),
}
SHAPES_HELD_OUT = {"n": 200, "seed": 1}  # `splice demo`'s held-out scenes: n_eval 200, seed = config.seed + 1


def load(directory: str, mode: str) -> Any:
    dtype, quantize_mode, with_head = MODES[mode]
    model = splice.VisionEncoderDecoderModel.from_pretrained(directory, dtype=dtype, quantize=quantize_mode).eval()
    return splice.quantize(model, "int8", include_lm_head=True) if with_head else model


@torch.no_grad()
def generate_ids(model: Any, records: list[dict], batch_size: int) -> list[torch.Tensor]:
    """Greedy ids per batch (the start token included), as `splice.inference.caption` generates them."""
    processor = model.processor
    batches = []
    for start in range(0, len(records), batch_size):
        images = [r["image"] for r in records[start : start + batch_size]]
        pixels = processor(images=images)["pixel_values"].to(model.device, model.dtype)
        batches.append(model.generate(pixels, **start_tokens(model, len(images))))
    return batches


def counted_positions(ids: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """`[B, L]` bool: fp32's generated positions (after the start token) up to and including its first eos."""
    generated = torch.zeros_like(ids, dtype=torch.bool)
    generated[:, 1:] = True
    ended = torch.zeros_like(ids, dtype=torch.bool)
    is_eos = torch.isin(ids, torch.tensor(sorted(eos)))
    ended[:, 1:] = is_eos[:, :-1].long().cumsum(-1).bool()  # positions after an eos
    return generated & ~ended


@torch.no_grad()
def agreement(model: Any, records: list[dict], reference: list[torch.Tensor], got: list[torch.Tensor], eos: set[int],
              batch_size: int) -> dict[str, float]:  # fmt: skip
    """Free-running and teacher-forced agreement of `model` (ids `got`) with fp32's ids `reference`."""
    same = total = same_sequences = sequences = forced_same = 0
    processor = model.processor
    for i, (ref, ids) in enumerate(zip(reference, got)):
        counted = counted_positions(ref, eos)
        width = max(ref.shape[1], ids.shape[1])
        padded = torch.full((ids.shape[0], width), -1, dtype=ids.dtype)
        padded[:, : ids.shape[1]] = ids
        equal = (padded[:, : ref.shape[1]] == ref) & counted
        same, total = same + int(equal.sum()), total + int(counted.sum())
        same_sequences += int((equal | ~counted).all(dim=1).sum())
        sequences += ref.shape[0]
        images = [r["image"] for r in records[i * batch_size : (i + 1) * batch_size]]
        pixels = processor(images=images)["pixel_values"].to(model.device, model.dtype)
        mask = torch.ones_like(ref[:, :-1])
        logits = model(pixel_values=pixels, decoder_input_ids=ref[:, :-1], decoder_attention_mask=mask).logits
        forced = (logits.argmax(-1) == ref[:, 1:]) & counted[:, 1:]
        forced_same += int(forced.sum())
    return {"free_running": same / total, "sequences_equal": same_sequences / sequences, "teacher_forced":
            forced_same / total}  # fmt: skip


def score(task: str, texts: list[str], records: list[dict]) -> dict[str, float]:
    if task == "ocr":
        return ocr_metrics(texts, [r["text"] for r in records])
    metrics = caption_metrics(texts, [record_references(r) for r in records], meteor=False)
    return metrics | slot_metrics(texts, [r["slots"] for r in records])


def held_out(task: str) -> list[dict]:
    if task == "shapes":
        return load_records("builtin:shapes", "caption", SHAPES_HELD_OUT["n"], SHAPES_HELD_OUT["seed"], None)
    records = []
    for i, options in enumerate(ocr_held_out_sets(OCR_DEMO).values()):
        records += load_records("builtin:ocr", "ocr", OCR_DEMO.n_held_out, OCR_DEMO.seed + 10 + i, None, options)
    return records


def evaluate_task(task: str, directory: str, batch_size: int, limit: int | None) -> dict[str, dict[str, float]]:
    records = held_out(task)[:limit]
    results, reference = {}, None
    for mode in MODES:
        model = load(directory, mode)
        eos = model.generation_config.eos_token_id
        eos = set(eos) if isinstance(eos, list) else {eos}
        ids = generate_ids(model, records, batch_size)
        texts = [t for batch in ids for t in decode_predictions(model.processor.tokenizer, batch)]
        reference = ids if reference is None else reference
        results[mode] = score(task, texts, records) | agreement(model, records, reference, ids, eos, batch_size)
        results[mode]["load_average"] = load_average()
        print(f"{task} {mode}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[mode].items()), flush=True)
    return results


def table(task: str, results: dict[str, dict[str, float]]) -> str:
    columns = ["cider", "bleu4", "slot_sample"] if task == "shapes" else ["cer", "wer", "exact_match"]
    head = f"| {task} mode | " + " | ".join(columns) + " | agreement free / teacher-forced | sequences equal |"
    lines = [head, "|" + " --- |" * (len(columns) + 3)]
    for mode, values in results.items():
        metrics = " | ".join(f"{values[c]:.4f}" for c in columns)
        agree = f"{100 * values['free_running']:.1f}% / {100 * values['teacher_forced']:.1f}%"
        lines.append(f"| {mode} | {metrics} | {agree} | {100 * values['sequences_equal']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", help="a model saved by `splice demo`")
    parser.add_argument("--ocr", help="a model saved by `splice demo --task ocr`")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="rows per generate (at most 16: decoding steps take the int8 kernel)"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out items (smoke test)")
    parser.add_argument("--output", default=None, help="write every number as JSON here")
    args = parser.parse_args(argv)
    if not (args.shapes or args.ocr):
        parser.error("pass --shapes DIR and/or --ocr DIR (models saved by `splice demo`)")
    print(f"load average at start: {load_average()}, torch threads {torch.get_num_threads()}", flush=True)
    results = {task: evaluate_task(task, d, args.batch_size, args.limit) for task, d in (("shapes", args.shapes),
               ("ocr", args.ocr)) if d}  # fmt: skip
    for task, values in results.items():
        print("\n" + table(task, values))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
