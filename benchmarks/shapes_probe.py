"""Can an encoder learn shape identity in the shapes demo's budget? A probe, no decoder.

    nice -n 10 python benchmarks/shapes_probe.py                 # every row
    nice -n 10 python benchmarks/shapes_probe.py --rows vit-p8 resnet --steps 300

Each row trains an encoder from random weights (built from a config dict, as `splice demo` builds it) with three
linear heads on single-shape scenes of `builtin:shapes` (colour: 6 classes, shape: 4, place: 5) and reports held-out
accuracy per head. The heads read the encoder's tokens the way the decoder's cross-attention does: through a learned
query attending over the tokens (no position added), so a place is readable only if the tokens carry it. Rows differ
in one thing each from the demo's encoder (ViT, 64 px, 8 px patches, width 128, 3 layers, lr 1e-3, AdamW, batch 32).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from splice.cli.demo import GRID_ENCODER
from splice.data.builtin import DOMAINS, PLACES, make_dataset

VIT = {
    "model_type": "vit", "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
    "intermediate_size": 256, "image_size": 64, "patch_size": 8,
}  # fmt: skip
RESNET = {
    "model_type": "resnet", "embedding_size": 32, "hidden_sizes": [64, 128], "depths": [1, 1],
    "layer_type": "basic", "out_features": None,
}  # fmt: skip
ROWS = {
    "vit-p8": {"encoder": VIT},  # the demo's encoder
    "vit-p8-lr3e-4": {"encoder": VIT, "lr": 3e-4},
    "vit-p8-3x-steps": {"encoder": VIT, "steps_factor": 3},
    "vit-p4": {"encoder": VIT | {"patch_size": 4}},  # a shape spans 3-4 patches a side instead of ~2
    "vit-p8-6-layers": {"encoder": VIT | {"num_hidden_layers": 6}},
    "resnet": {"encoder": RESNET},  # convolutions (locality prior), tokens from the 8x8 feature map
    "grid": {"encoder": GRID_ENCODER},  # plain 3x3 convolutions, 8x8 tokens with learned 2D positions
}


class Probe(nn.Module):
    """An encoder and, per head, a learned query attending over its tokens, then a linear classifier."""

    def __init__(self, encoder: nn.Module, width: int, classes: dict[str, int]):
        super().__init__()
        self.encoder = encoder
        self.queries = nn.Parameter(torch.randn(len(classes), width) * 0.02)
        self.keys = nn.Linear(width, width)
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in classes.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder(pixel_values=pixels).last_hidden_state
        if hidden.dim() == 4:  # a feature map [B, E, H, W]: one token per position, as splice.encoders does
            hidden = hidden.flatten(2).transpose(1, 2)
        weights = torch.softmax(self.keys(hidden) @ self.queries.T / hidden.shape[-1] ** 0.5, dim=1)  # [B, T, Q]
        pooled = weights.transpose(1, 2) @ hidden  # [B, Q, E]
        return {name: head(pooled[:, i]) for i, (name, head) in enumerate(self.heads.items())}


def _data(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    examples = make_dataset("shapes", n, seed=seed, max_shapes=1)
    vocabulary = DOMAINS["a"]
    pixels = torch.tensor(np.stack([np.asarray(e.image) for e in examples])).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = {
        "colour": [vocabulary.colours.index(e.slots.objects[0][0]) for e in examples],
        "shape": [vocabulary.shapes.index(e.slots.objects[0][1]) for e in examples],
        "place": [list(PLACES).index(e.slots.where) for e in examples],
    }
    return pixels, {k: torch.tensor(v) for k, v in labels.items()}


def run_row(name: str, steps: int, n_train: int, n_eval: int, batch_size: int = 32) -> dict:
    row = ROWS[name]
    torch.manual_seed(0)
    spec = dict(row["encoder"])
    encoder = AutoModel.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    width = spec.get("hidden_size") or spec["hidden_sizes"][-1]
    probe = Probe(encoder, width, {"colour": 6, "shape": 4, "place": len(PLACES)})
    pixels, labels = _data(n_train, seed=0)
    eval_pixels, eval_labels = _data(n_eval, seed=1)
    steps = steps * row.get("steps_factor", 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=row.get("lr", 1e-3), weight_decay=0.01)
    warmup = max(1, steps // 20)  # the demo's schedule: 5% linear warmup, then cosine decay
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    )
    start = time.time()
    generator = torch.Generator().manual_seed(0)
    probe.train()
    for _ in range(steps):
        index = torch.randint(0, n_train, (batch_size,), generator=generator)
        logits = probe(pixels[index])
        loss = sum(nn.functional.cross_entropy(logits[k], labels[k][index]) for k in logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    probe.eval()
    with torch.no_grad():
        logits = {k: torch.cat(v) for k, v in _batched(probe, eval_pixels).items()}
    accuracy = {k: float((logits[k].argmax(-1) == eval_labels[k]).float().mean()) for k in logits}
    return {"row": name, "steps": steps, **accuracy, "seconds": round(time.time() - start, 1)}


def _batched(probe: Probe, pixels: torch.Tensor, size: int = 100) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(pixels), size):
        for k, v in probe(pixels[i : i + size]).items():
            out.setdefault(k, []).append(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    parser.add_argument("--steps", type=int, default=300, help="training steps per row (the demo takes 470)")
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.rows:
        results.append(run_row(name, args.steps, args.n_train, args.n_eval))
        print(json.dumps(results[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, load average {load:.1f} at the end")
    print(f"{'row':18} {'steps':>5} {'colour':>6} {'shape':>6} {'place':>6} {'seconds':>7}  (chance: 0.17 0.25 0.20)")
    for r in results:
        accuracies = " ".join(f"{r[k]:6.3f}" for k in ("colour", "shape", "place"))
        print(f"{r['row']:18} {r['steps']:5} {accuracies} {r['seconds']:7.0f}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
