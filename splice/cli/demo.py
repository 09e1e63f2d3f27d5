"""`splice demo`: train a small captioner from scratch on built-in generated data, offline, on a CPU.

`shapes` captions scenes of coloured shapes; `ocr` reads rendered text lines. Both start from random weights (a ViT
encoder and a GPT-2 decoder with native cross-attention) and a tokenizer trained on the data, evaluate on held-out
generated data, save the model with its processor and caption a few held-out images.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..training.config import TrainConfig

HELP = "train a small captioner on generated data, offline, and caption samples"


def _model(image_size: int | list[int], patch_size: int | list[int], width: int, layers: int) -> dict:
    encoder = {
        "model_type": "vit", "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": 2 * width, "image_size": image_size, "patch_size": patch_size,
    }  # fmt: skip
    decoder = {"model_type": "gpt2", "n_embd": width, "n_layer": layers, "n_head": 4, "n_positions": 64}
    return {"encoder": encoder, "decoder": decoder}


# Sized to finish within about ten minutes on two CPU cores.
DEMOS = {
    "shapes": TrainConfig(
        **_model(64, 8, 128, 3), data="builtin:shapes", n_train=3000, n_eval=200, epochs=5, learning_rate=1e-3
    ),
    # Full-height 32x4 patches: one token per 4-pixel column of the text line.
    "ocr": TrainConfig(
        **_model([32, 160], [32, 4], 128, 3),
        data="builtin:ocr",
        n_train=4000,
        n_eval=200,
        epochs=10,
        learning_rate=1e-3,
    ),
}


def run_demo(task: str = "shapes", output_dir: str | None = None, quick: bool = False) -> dict:
    r"""
    Train, evaluate, save and caption samples.

    Args:
        task: `"shapes"` or `"ocr"`.
        output_dir: where the model goes (default `splice-demo-<task>`).
        quick: a few steps on a handful of samples (a smoke test, not a useful model).

    Returns:
        The held-out metrics, plus `seconds` and `output_dir`.
    """
    from ..models import VisionEncoderDecoderModel
    from ..training.pipeline import load_records, train

    config = dataclasses.replace(DEMOS[task], output_dir=output_dir or f"splice-demo-{task}")
    if quick:
        config = dataclasses.replace(config, n_train=16, n_eval=4, epochs=1, batch_size=8)
    start = time.time()
    metrics = train(config)
    seconds = time.time() - start

    model = VisionEncoderDecoderModel.from_pretrained(config.output_dir)
    samples = load_records(config.data, task, 4, seed=config.seed + 2, image_size=config.image_size)
    captions = model.caption([s["image"] for s in samples])
    print(f"\nsplice demo ({task}): {seconds:.0f} s on this machine; model saved to {Path(config.output_dir)}")
    counts = sorted({len(s.get("references") or [s["text"]]) for s in samples})  # generated alike: same counts
    references = f"all {counts[-1]} references" if counts[-1] > 1 else "its 1 reference"
    print(
        f"held-out metrics ({config.n_eval} items, each scored against {references}; the per-epoch eval_*_1ref "
        "metrics in the log score the one training target): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    )
    for caption, sample in zip(captions, samples):
        print(f"  generated: {caption!r:40} reference: {sample['text']!r}")
    return metrics | {"seconds": seconds, "output_dir": config.output_dir}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice demo`."""
    parser.add_argument("--task", choices=tuple(DEMOS), default="shapes")
    parser.add_argument("--output-dir", default=None, help="default: splice-demo-<task>")
    parser.add_argument("--quick", action="store_true", help="a few steps on a handful of samples (smoke test)")


def run(args: argparse.Namespace) -> None:
    """Run the demo chosen."""
    run_demo(args.task, args.output_dir, quick=args.quick)
