"""Reproduce `splice demo` (shapes captioning: slot accuracy, CIDEr, BLEU-4, wall time), and its ablation rows.

    nice -n 10 python benchmarks/shapes_demo.py                    # the demo's settings (about 10 minutes, 2 cores)
    nice -n 10 python benchmarks/shapes_demo.py --rows vit-p8      # the first demo (ViT encoder): every shape wrong
    nice -n 10 python benchmarks/shapes_demo.py --rows resnet      # the previous demo (ResNet): pairs swapped
    nice -n 10 python benchmarks/shapes_demo.py --small --rows demo vit-p8   # fewer images and epochs, per row
    python benchmarks/shapes_demo.py --output shapes.json          # also write the results as JSON

Each row trains from random weights with `run_demo("shapes", shapes=<config>)` and reports the held-out slot accuracy
(colour, shape, place/relation, every slot of a caption; `splice.data.slots`), CIDEr and BLEU-4 against all five
references, and the wall time and CPU time of the row. Timings depend on the machine and on what else runs on it:
note the core count and load with the numbers. `benchmarks/shapes_probe.py` asks the narrower question (can an encoder
learn shape identity at all in this budget) without a decoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

from splice.cli.demo import DEMOS, GRID_ENCODER, RESNET_ENCODER, VIT_ENCODER, run_demo

# Each row changes one thing in a recipe: the demo's (`DEMOS["shapes"]`: the grid encoder, 18,000 scenes, 4 epochs,
# 2,252 steps in bfloat16) or the previous demo's (`RESNET`: the ResNet encoder on 6,000 scenes, 752 steps).
RESNET = {"encoder": RESNET_ENCODER, "n_train": 6000}
ROWS = {
    "demo": {},
    "vit-p8": {"encoder": VIT_ENCODER, "n_train": 6000, "bf16": False},  # the first demo: ViT, 8 px patches, float32
    "vit-p8-bf16": {"encoder": VIT_ENCODER, "n_train": 6000},  # the ViT with bfloat16 (steps per second only)
    "resnet": RESNET,  # the previous demo
    "float32": RESNET | {"bf16": False},
    # The feature map's tokens carry no position: GPT-2's own position embeddings index them as a prefix.
    "prefix": RESNET | {"conditioning": "prefix", "decoder": DEMOS["shapes"].decoder | {"n_positions": 128}},
    # A deeper ResNet down to 2x2 tokens, each seeing the whole image (where things are, from its padding).
    "resnet-2x2": RESNET | {"encoder": RESNET_ENCODER | {"hidden_sizes": [32, 64, 128, 128], "depths": [1, 1, 1, 1]}},
    # Learned 2D positions on the 8x8 tokens (a conv stack + one transformer layer), the previous demo's 752 steps.
    "grid": {"n_train": 6000},
    # The previous demo with three times the steps, on fresh scenes (18,000 instead of 6,000, still 4 epochs).
    "resnet-3x": {"encoder": RESNET_ENCODER},
    # Two transformer layers over the grid's tokens instead of one (a shape's tokens can read where the other one is).
    "grid2-3x": {"encoder": GRID_ENCODER | {"num_hidden_layers": 2}},
    # 4.5 times the previous demo's steps (27,000 scenes x 4 epochs = 3,376 steps).
    "grid-4.5x": {"n_train": 27000},
}
SMALL = {"n_train": 1500, "epochs": 2, "n_eval": 100}


def run_row(name: str, small: bool = False) -> dict:
    config = dataclasses.replace(DEMOS["shapes"], **ROWS[name], **(SMALL if small else {}))
    with tempfile.TemporaryDirectory() as output_dir:
        start, cpu = time.time(), time.process_time()
        metrics = run_demo("shapes", output_dir, shapes=config)
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu
    keep = ("slot_colour", "slot_shape", "slot_where", "slot_sample", "slot_parsed", "cider", "bleu4")
    row = {"row": name, **{k: metrics[k] for k in keep}}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return row | {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "load": load, "small": small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=["demo"])
    parser.add_argument("--small", action="store_true", help="fewer images and epochs (a quick check, not the demo)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    results = []
    for name in args.rows:
        results.append(run_row(name, args.small))
        print(json.dumps(results[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPU cores, load average {load:.1f} at the end")
    header = ("colour", "shape", "where", "sample", "CIDEr", "BLEU-4")
    print(f"{'row':12} " + " ".join(f"{h:>6}" for h in header) + f" {'s':>5} {'cpu s':>6}")
    for r in results:
        print(
            f"{r['row']:12} {r['slot_colour']:6.3f} {r['slot_shape']:6.3f} {r['slot_where']:6.3f} "
            f"{r['slot_sample']:6.3f} {r['cider']:6.3f} {r['bleu4']:6.3f} {r['seconds']:5.0f} {r['cpu_seconds']:6.0f}"
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
