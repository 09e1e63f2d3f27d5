"""Reproduce `splice demo --task ocr` (CER/WER on the held-out sets, wall time), and its ablation rows.

    python benchmarks/ocr_demo.py                     # the full demo's settings (about 10 minutes on 2 idle cores)
    python benchmarks/ocr_demo.py --rows no-ctc vit   # the demo with one technique removed, per row
    python benchmarks/ocr_demo.py --small             # a ~2-minute variant (fewer lines and epochs)
    python benchmarks/ocr_demo.py --output ocr.json   # also write the results as JSON
    python benchmarks/ocr_demo.py --n-train 12000     # the demo with fewer training lines

Each row trains from random weights with `run_demo("ocr", ocr=<settings>)` and reports the held-out CER/WER
(all sets together and per set) and the wall time of the whole command. Timings depend on the machine and on what else
runs on it: note the core count and load with the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

from splice.cli.demo import OCR_DEMO, OcrDemo, run_demo

# Each ablation row removes one technique from the demo's recipe.
ROWS = {
    "demo": {},
    "no-ctc": {"ctc_weight": 0.0},  # attention loss only
    "vit": {"encoder": "vit", "encoder_layers": 3},  # ViT on 32x4 column patches instead of the line encoder
    "vit-no-ctc": {"encoder": "vit", "encoder_layers": 3, "ctc_weight": 0.0},  # the starting point
    "constant-lr": {"warmup_ratio": 0.0},  # no warmup (the cosine decay stays)
    "float32": {"bf16": False},  # no bfloat16 autocast: the same steps, about 1.6 times the training time
}
SMALL = {"n_train": 2000, "epochs": 2, "n_held_out": 50, "n_eval": 50}


def run_row(name: str, settings: OcrDemo) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.time()
        metrics = run_demo("ocr", output_dir, ocr=settings)
        seconds = time.time() - start
    row = {"row": name, "cer": metrics["cer"], "wer": metrics["wer"], "exact_match": metrics["exact_match"]}
    settings_used = dataclasses.asdict(settings)
    return row | {"seconds": round(seconds, 1), "held_out": metrics["held_out"], "settings": settings_used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=["demo"])
    parser.add_argument("--small", action="store_true", help="fewer lines and epochs (a quick check, not the demo)")
    parser.add_argument("--n-train", type=int, default=None, help="training lines (default: the demo's)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    results = []
    for name in args.rows:
        settings = dataclasses.replace(OCR_DEMO, **ROWS[name], **(SMALL if args.small else {}))
        if args.n_train is not None:
            settings = dataclasses.replace(settings, n_train=args.n_train)
        results.append(run_row(name, settings))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    print(f"{'row':14} {'CER':>7} {'WER':>7} {'exact':>6} {'seconds':>8}")
    for row in results:
        print(f"{row['row']:14} {row['cer']:7.4f} {row['wer']:7.4f} {row['exact_match']:6.3f} {row['seconds']:8.0f}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
