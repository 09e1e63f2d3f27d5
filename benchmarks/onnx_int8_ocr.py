"""int8 against fp32 on a trained model: the OCR demo's held-out sets through `splice export` and `splice_onnx`.

    splice demo --task ocr --output-dir /tmp/ocr_model      # train once (about 8 minutes on 2 idle cores)
    python benchmarks/onnx_int8_ocr.py /tmp/ocr_model        # export fp32 + int8, score each

The model is exported three times' worth: fp32, int8 with the LM head kept in fp32 (what `--quantize int8` writes) and
int8 with the LM head quantized too (`export_onnx(quantize_lm_head=True)`). Each runs greedy decoding, with the
model's generation config, on the demo's four held-out sets (the same seeds and options as `splice demo`); the table
gives the CER / WER of each against the truth, the token agreement with fp32 (of the tokens fp32 generates, up to and
including its EOS, the share the int8 graphs generate at the same position), whole sequences equal, the decoder file's
size and the decoding time. The PyTorch model's ids are compared with fp32's as well (they must be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from splice.cli.demo import OCR_DEMO, ocr_held_out_sets
from splice.data_io import open_image
from splice.export import export_onnx, load_model
from splice.training.metrics import ocr_metrics
from splice.training.pipeline import load_records
from splice_onnx import OnnxSeq2Seq

BATCH = 32


def held_out(n: int) -> tuple[list, list[str]]:
    """The demo's held-out images and texts (`_run_ocr_demo`'s seeds and options), `n` per set."""
    images, texts = [], []
    for i, options in enumerate(ocr_held_out_sets(OCR_DEMO).values()):
        records = load_records("builtin:ocr", "ocr", n, OCR_DEMO.seed + 10 + i, None, options)
        images += [open_image(r["image"]) for r in records]
        texts += [r["text"] for r in records]
    return images, texts


def run(runtime: OnnxSeq2Seq, images: list) -> tuple[list[np.ndarray], float]:
    rows, start = [], time.perf_counter()
    for at in range(0, len(images), BATCH):
        feed = {"pixel_values": runtime.image_processor(images[at : at + BATCH])}
        rows += list(runtime.generate(feed))
    return rows, time.perf_counter() - start


def generated(row: np.ndarray, eos: int) -> np.ndarray:
    """The generated tokens (start token dropped), up to and including the first EOS."""
    tokens = row[1:]
    ends = np.flatnonzero(tokens == eos)
    return tokens[: ends[0] + 1] if len(ends) else tokens


def agreement(reference: list[np.ndarray], other: list[np.ndarray], eos: int) -> tuple[float, float]:
    """Token agreement with `reference` (position by position over its tokens) and whole sequences equal."""
    same = total = whole = 0
    for a, b in zip(reference, other):
        a, b = generated(a, eos), generated(b, eos)
        width = min(len(a), len(b))
        same += int((a[:width] == b[:width]).sum())
        total += len(a)
        whole += int(len(a) == len(b) and (a == b).all())
    return same / total, whole / len(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--per-set", type=int, default=OCR_DEMO.n_held_out, help="lines per held-out set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, truth = held_out(args.per_set)
    model = load_model(args.model_dir)
    eos = model.generation_config.eos_token_id
    with tempfile.TemporaryDirectory() as tmp:
        exports = {}
        for name, lm_head in (("int8", False), ("int8, LM head int8", True)):
            start = time.perf_counter()
            export_onnx(args.model_dir, f"{tmp}/{name}", quantize="int8", quantize_lm_head=lm_head, progress=None)
            exports[name] = (Path(tmp) / name, time.perf_counter() - start)
        fp32 = OnnxSeq2Seq.from_pretrained(exports["int8"][0], threads=args.threads)
        runtimes = {"fp32": fp32}
        for name, (folder, _) in exports.items():
            runtimes[name] = OnnxSeq2Seq.from_pretrained(folder, quantized=True, threads=args.threads)
        results = {name: run(runtime, images) for name, runtime in runtimes.items()}
        with torch.no_grad():
            pixels = torch.from_numpy(fp32.image_processor(images))
            torch_rows = [model.generate(pixels[at : at + BATCH]).numpy() for at in range(0, len(images), BATCH)]
        torch_rows = [row for rows in torch_rows for row in rows]
        torch_equal = all(np.array_equal(generated(a, eos), generated(b, eos))
                          for a, b in zip(torch_rows, results["fp32"][0]))  # fmt: skip
        rows = []
        for name, (ids, seconds) in results.items():
            texts = fp32.tokenizer.decode(_pad(ids, model.generation_config.pad_token_id))
            metrics = ocr_metrics(texts, truth)
            tokens, whole = agreement(results["fp32"][0], ids, eos)
            folder = exports["int8"][0] if name == "fp32" else exports[name][0]
            manifest = json.loads((folder / "splice_onnx.json").read_text())
            files = manifest["files"] if name == "fp32" else manifest["quantized_files"]
            size = os.path.getsize(folder / files["decoder"]) + os.path.getsize(folder / files["encoder"])
            rows.append({"graphs": name, "cer": metrics["cer"], "wer": metrics["wer"], "token_agreement": tokens,
                         "sequences_equal": whole, "mb": size / 1e6, "seconds": seconds})  # fmt: skip
    load = os.getloadavg()[0]
    print(f"{len(truth)} held-out lines ({args.per_set} per set), greedy, batch {BATCH}, {args.threads} thread(s); "
          f"load average {load:.1f}; PyTorch ids equal to fp32's: {torch_equal}")  # fmt: skip
    print("| graphs | CER | WER | token agreement with fp32 | sequences equal | encoder + decoder MB | decode s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['graphs']} | {row['cer']:.4f} | {row['wer']:.4f} | {row['token_agreement']:.4f} | "
              f"{row['sequences_equal']:.3f} | {row['mb']:.2f} | {row['seconds']:.1f} |")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps({"rows": rows, "torch_equal": torch_equal, "load": load}, indent=1))


def _pad(rows: list[np.ndarray], pad: int) -> np.ndarray:
    width = max(len(row) for row in rows)
    return np.stack([np.pad(row, (0, width - len(row)), constant_values=pad) for row in rows])


if __name__ == "__main__":
    main()
