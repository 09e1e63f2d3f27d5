"""Reproduce `splice demo` (shapes captioning: slot accuracy, CIDEr, BLEU-4, wall time), and its ablation rows.

    nice -n 10 python benchmarks/shapes_demo.py                    # the demo's settings (about 10 minutes, 2 cores)
    nice -n 10 python benchmarks/shapes_demo.py --rows vit-p8      # the first demo (ViT encoder): every shape wrong
    nice -n 10 python benchmarks/shapes_demo.py --rows resnet      # the ResNet demo: pairs swapped at chance
    nice -n 10 python benchmarks/shapes_demo.py --rows demo-any    # the grid demo, pairs in either order: 0.885
    nice -n 10 python benchmarks/shapes_demo.py --small --rows demo vit-p8   # fewer images and epochs, per row
    python benchmarks/shapes_demo.py --output shapes.json          # also write the results as JSON

Each row trains from random weights with `run_demo("shapes", shapes=<config>)` and reports the held-out slot accuracy
(colour, shape, place/relation, every slot of a caption; `splice.data.slots`), CIDEr and BLEU-4 against all five
references, the count of each kind of error on the held-out scenes (`error_kind`: swapped pair, wrong shape, ...; with
`--captions DIR` every held-out caption too), and the wall time and CPU time of the row. Timings depend on the
machine and on what else runs on it: note the core count and load with the numbers. `benchmarks/shapes_probe.py` asks
the narrower question (can an encoder learn shape identity at all in this budget) without a decoder;
`benchmarks/shapes_pairs.py` asks which shape a trained model names first and whether it says the right relation.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import tempfile
import time

from splice import VisionEncoderDecoderModel
from splice.cli.demo import DEMOS, GRID_ENCODER, RESNET_ENCODER, VIT_ENCODER, run_demo
from splice.data.builtin import ShapeSlots
from splice.data.slots import parse_shapes_caption
from splice.inference import generate_for_records
from splice.training.pipeline import load_records

# Each row changes one thing in a recipe: the demo's (`DEMOS["shapes"]`: the grid encoder, 18,000 scenes, 4 epochs,
# 2,252 steps in bfloat16, training captions naming a pair left / upper shape first), the grid demo's before that
# (`ANY_ORDER`: the same, but the training captions name a pair in either order, as the references do) or the ResNet
# demo's (`RESNET`: the ResNet encoder on 6,000 scenes, 752 steps, either order).
ANY_ORDER = {"data_options": {}}
RESNET = ANY_ORDER | {"encoder": RESNET_ENCODER, "n_train": 6000}
ROWS = {
    "demo": {},
    "vit-p8": RESNET | {"encoder": VIT_ENCODER, "bf16": False},  # the first demo: ViT, 8 px patches, float32
    "vit-p8-bf16": RESNET | {"encoder": VIT_ENCODER},  # the ViT with bfloat16 (steps per second only)
    "resnet": RESNET,  # the ResNet demo
    "float32": RESNET | {"bf16": False},
    # The feature map's tokens carry no position: GPT-2's own position embeddings index them as a prefix.
    "prefix": RESNET | {"conditioning": "prefix", "decoder": DEMOS["shapes"].decoder | {"n_positions": 128}},
    # A deeper ResNet down to 2x2 tokens, each seeing the whole image (where things are, from its padding).
    "resnet-2x2": RESNET | {"encoder": RESNET_ENCODER | {"hidden_sizes": [32, 64, 128, 128], "depths": [1, 1, 1, 1]}},
    # Learned 2D positions on the 8x8 tokens (a conv stack + one transformer layer), the ResNet demo's 752 steps.
    "grid": ANY_ORDER | {"n_train": 6000},
    # The ResNet demo with three times the steps, on fresh scenes (18,000 instead of 6,000, still 4 epochs).
    "resnet-3x": ANY_ORDER | {"encoder": RESNET_ENCODER},
    # The grid demo before reading order: 2,252 steps, training captions naming a pair in either order.
    "demo-any": ANY_ORDER,
    # Two transformer layers over the grid's tokens instead of one (a shape's tokens can read where the other one is).
    "grid2-3x": ANY_ORDER | {"encoder": GRID_ENCODER | {"num_hidden_layers": 2}},
    # 4.5 times the ResNet demo's steps (27,000 scenes x 4 epochs = 3,376 steps).
    "grid-4.5x": ANY_ORDER | {"n_train": 27000},
    # Training captions that name a pair's shapes left (upper) first in each phrasing (`pair_order="reading"`), at the
    # ResNet demo's 752 steps (the demo's own row is `demo`).
    "grid-reading": {"n_train": 6000},
}
SMALL = {"n_train": 1500, "epochs": 2, "n_eval": 100}


def error_kind(caption: str, truth: ShapeSlots) -> str:
    """What is wrong with a generated caption: `"right"`, `"unparsed"`, `"count"` (one shape named for two or the
    reverse), `"place"` / `"relation axis"`, `"swapped"` (a pair's colours named the wrong way round for the relation
    said), else `"colour"` or `"shape"` (the first slot wrong, shapes compared in canonical order)."""
    guess = parse_shapes_caption(caption)
    if guess is None:
        return "unparsed"
    if guess == truth:
        return "right"
    if len(guess.objects) != len(truth.objects):
        return "count"
    if guess.where != truth.where:
        return "place" if len(truth.objects) == 1 else "relation axis"
    colours, true_colours = [o[0] for o in guess.objects], [o[0] for o in truth.objects]
    if len(truth.objects) == 2 and colours == true_colours[::-1]:  # a pair's two colours always differ
        return "swapped"
    return "colour" if colours != true_colours else "shape"


def held_out_errors(config, output_dir: str) -> tuple[collections.Counter, list[dict]]:
    """Generate for the demo's held-out scenes with the saved model; count each error kind, list every caption."""
    model = VisionEncoderDecoderModel.from_pretrained(output_dir)
    records = load_records(config.data, "caption", config.n_eval, config.seed + 1, None, config.data_options)
    processor = model.processor
    captions = generate_for_records(model, records, processor.tokenizer, processor.image_processor, 50)
    rows = [
        {
            "generated": c,
            "reference": r["references"][0],
            "kind": error_kind(c, r["slots"]),
            "pair": len(r["slots"].objects) == 2,
        }
        for c, r in zip(captions, records)
    ]
    return collections.Counter(r["kind"] for r in rows), rows


def run_row(name: str, small: bool = False, captions_dir: str | None = None, seed: int = 0) -> dict:
    config = dataclasses.replace(DEMOS["shapes"], **ROWS[name] | (SMALL if small else {}), seed=seed)
    with tempfile.TemporaryDirectory() as output_dir:
        start, cpu = time.time(), time.process_time()
        metrics = run_demo("shapes", output_dir, shapes=config)
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu
        errors, captions = held_out_errors(config, output_dir)
    if captions_dir:
        with open(os.path.join(captions_dir, f"{name}-seed{seed}.captions.json"), "w", encoding="utf-8") as f:
            json.dump(captions, f, indent=1)
    keep = ("slot_colour", "slot_shape", "slot_where", "slot_sample", "slot_parsed", "cider", "bleu4")
    row = {"row": name, **{k: metrics[k] for k in keep}, "errors": dict(errors.most_common())}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return row | {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "load": load, "small": small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=["demo"])
    parser.add_argument("--small", action="store_true", help="fewer images and epochs (a quick check, not the demo)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    parser.add_argument("--captions", default=None, help="a folder: write each row's held-out captions there")
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed; the held-out scenes are drawn with seed + 1"
    )
    args = parser.parse_args()
    results = []
    for name in args.rows:
        results.append(run_row(name, args.small, args.captions, args.seed) | {"seed": args.seed})
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
