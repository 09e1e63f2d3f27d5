"""Where a trained shapes captioner goes wrong on pairs: the order it names them in, and the relation it says next.

    python benchmarks/shapes_pairs.py splice-demo-shapes            # a model saved by `splice demo`
    python benchmarks/shapes_pairs.py MODEL_DIR --n-eval 200 --seed 1

For each held-out pair scene (the demo's: `builtin:shapes`, `seed` 1, `n_eval` 200) it reports

- greedy: which shape the generated caption names first (the left / upper one, or the other) and how often each order
  comes out swapped (the relation said does not match the order named), for left-right and above-below pairs;
- forced: the caption's first shape fixed by the scene's truth, left (upper) first or the other first, in the
  canonical frame `"a {first} {relation} a {second}"`; the relation scored highest of the four (summed log-probability
  of the whole caption) is right or not. A decoder that can read where the shape it named is says the right relation
  for both orders; one that cannot is right about half the time for one order or both.
"""

from __future__ import annotations

import argparse
import json

import torch

from splice import VisionEncoderDecoderModel
from splice.data.builtin import RELATIONS
from splice.data.slots import parse_shapes_caption
from splice.inference import generate_for_records
from splice.training.pipeline import load_records

AXES = {"to the left of": "left-right", "above": "above-below"}  # a pair's canonical relation -> its axis


def caption_log_probs(model, pixel_values: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Summed log-probability of each text (its EOS included) given its image; `pixel_values` one row per text."""
    tokenizer = model.processor.tokenizer
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, labels=labels).logits.float()
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels != -100)).sum(-1)


def forced_relations(model, image, slots) -> dict[str, bool]:
    """Whether the best-scored relation is right with the left (upper) shape named first, and with the other."""
    low, high = [" ".join(o) for o in slots.objects]
    pixel_values = model.processor(images=[image])["pixel_values"]
    right = {}
    for order, (first, second) in {"low first": (low, high), "high first": (high, low)}.items():
        texts = [f"a {first} {relation} a {second}" for relation in RELATIONS]
        scores = caption_log_probs(model, pixel_values.expand(len(texts), -1, -1, -1), texts)
        said = parse_shapes_caption(texts[int(scores.argmax())])
        right[order] = said == slots
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="the held-out set's seed (the demo's: its seed + 1)")
    args = parser.parse_args()
    model = VisionEncoderDecoderModel.from_pretrained(args.model_dir).eval()
    records = [
        r
        for r in load_records("builtin:shapes", "caption", args.n_eval, args.seed, None)
        if len(r["slots"].objects) == 2
    ]
    processor = model.processor
    captions = generate_for_records(model, records, processor.tokenizer, processor.image_processor, 50)
    greedy = {(o, a): [0, 0] for o in ("low first", "high first") for a in AXES.values()}  # [captions, swapped]
    forced = {(o, a): [0, 0] for o in ("low first", "high first") for a in AXES.values()}  # [pairs, right]
    for caption, record in zip(captions, records):
        slots, guess = record["slots"], parse_shapes_caption(caption)
        axis = AXES[slots.where]
        named = [w for w in caption.split() if w in {c for c, _ in slots.objects}]
        if guess is not None and len(guess.objects) == 2 and guess.where == slots.where and len(set(named)) == 2:
            order = "low first" if named[0] == slots.objects[0][0] else "high first"
            greedy[order, axis][0] += 1
            greedy[order, axis][1] += guess.objects[0][0] != slots.objects[0][0]
        for order, right in forced_relations(model, record["image"], slots).items():
            forced[order, axis][0] += 1
            forced[order, axis][1] += right
    result = {
        "pairs": len(records),
        "greedy (captions, swapped)": {f"{o}, {a}": v for (o, a), v in greedy.items()},
        "forced relation right": {f"{o}, {a}": round(r / n, 3) for (o, a), (n, r) in forced.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
