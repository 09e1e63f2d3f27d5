"""`splice demo`: train a small captioner from scratch on built-in generated data, offline, on a CPU.

`shapes` captions scenes of coloured shapes (a grid encoder, `splice_grid_encoder`: convolutions whose 8x8
feature-map tokens carry learned 2D positions, and a GPT-2 decoder with native cross-attention). `ocr`
reads rendered text lines: a CRNN-style line encoder (`splice_line_encoder`) and a GPT-2 decoder, trained with joint
CTC–attention (`ctc_weight`) on words and random strings, and scored on held-out fonts and strings ([`OcrDemo`] holds
its settings). Both start from random weights and a tokenizer trained on the data, evaluate on held-out generated
data, save the model with its processor (for `splice caption`) and print a few held-out predictions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

from ..training.config import TrainConfig

TASKS = ("shapes", "ocr", "smallcap")


def _model(image_size: int | list[int], patch_size: int | list[int], width: int, layers: int) -> dict:
    encoder = {
        "model_type": "vit", "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": 2 * width, "image_size": image_size, "patch_size": patch_size,
    }  # fmt: skip
    decoder = {"model_type": "gpt2", "n_embd": width, "n_layer": layers, "n_head": 4, "n_positions": 64}
    return {"encoder": encoder, "decoder": decoder}


# The shapes demo's earlier encoders (benchmarks/README.md, shapes demo). A ViT on 8 px patches of these 64 px scenes
# (`VIT_ENCODER`, the first) learns colours, places and the sentence frames but not which shape is which in this
# budget: its held-out shape slots stay at chance. A small ResNet (`RESNET_ENCODER`, its 8x8 feature map becomes 64
# tokens) learns the shapes, but its tokens carry no position, so a pair's shapes often come out the wrong way round.
RESNET_ENCODER = {
    "model_type": "resnet", "embedding_size": 32, "hidden_sizes": [64, 128], "depths": [1, 1], "layer_type": "basic",
    "image_size": 64,
}  # fmt: skip
VIT_ENCODER = _model(64, 8, 128, 3)["encoder"]
# The demo's encoder: a small conv stack whose 8x8 feature-map tokens carry learned 2D positions and pass one
# transformer layer (`splice_grid_encoder`), so the decoder's cross-attention can tell the left shape from the right.
GRID_ENCODER = {
    "model_type": "splice_grid_encoder", "image_size": 64, "channels": [32, 64, 128, 128], "hidden_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 256,
}  # fmt: skip

# Sized to finish within about ten minutes on two CPU cores.
DEMOS = {
    "shapes": TrainConfig(
        encoder=GRID_ENCODER,
        decoder=_model(64, 8, 128, 3)["decoder"],
        data="builtin:shapes",
        # Training captions name a pair left (upper) shape first: in either order, the decoder has to read where the
        # shape it chose to name is, and it said "below" for most above-below pairs (benchmarks/README.md, shapes demo).
        data_options={"pair_order": "reading"},
        n_train=18000,  # 4 epochs: 2,252 steps on fresh scenes (6,000 scenes for 12 epochs would repeat them)
        n_eval=200,
        epochs=4,
        learning_rate=1e-3,
        bf16=True,
    ),
}


@dataclasses.dataclass(frozen=True)
class OcrDemo:
    r"""
    The OCR demo's settings; `dataclasses.replace(OCR_DEMO, ...)` builds a smaller variant (tests, benchmarks).

    A CRNN-style line encoder (`splice_line_encoder`: convolutions keeping the horizontal resolution, one token per
    4-pixel column, learned positions, 2 transformer layers) spliced onto a GPT-2 decoder with cross-attention, trained
    from random weights with joint CTC–attention (`ctc_weight`), a warmed-up cosine learning rate and bfloat16
    autocast (`bf16`). Training mixes common words with random strings; the fonts in `held_out_fonts` are never
    rendered for training.

    Args:
        encoder: `"line"` (the CRNN-style line encoder) or `"vit"` (a ViT on 32x4 column patches, for comparison).
        width, encoder_layers, decoder_layers: model sizes.
        n_train, epochs, batch_size, learning_rate, warmup_ratio, ctc_weight: training.
        bf16: bfloat16 autocast in training (about 0.6 times the step time on a CPU with AVX-512 BF16 or AMX, which
            buys the extra steps; set `False` on a CPU without them, where it is slower).
        position_init_scale: the line encoder's position embeddings start as this times a sinusoid table.
        dropout: the decoder's dropout (GPT-2's default 0.1 only slows a short run on fresh data).
        n_eval: the per-epoch check (unseen strings, training fonts).
        n_held_out: items per held-out set (see [`ocr_held_out_sets`]).
        held_out_fonts: font file names left out of training.
    """

    encoder: str = "line"
    width: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 3
    n_train: int = 16000
    epochs: float = 8  # 4,000 steps (the CER / time trade-off per epoch count: benchmarks/README.md, OCR demo)
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    ctc_weight: float = 0.5
    bf16: bool = True
    position_init_scale: float = 0.5
    dropout: float = 0.0
    n_eval: int = 100
    n_held_out: int = 100
    held_out_fonts: tuple[str, ...] = ("DejaVuSerifCondensed.ttf", "DejaVuSansMono-Oblique.ttf")
    seed: int = 0


OCR_DEMO = OcrDemo()


def ocr_train_config(settings: OcrDemo = OCR_DEMO, output_dir: str = "splice-demo-ocr") -> TrainConfig:
    """The `TrainConfig` of an OCR demo variant (its per-epoch eval: unseen strings in the training fonts)."""
    if settings.encoder == "vit":  # the ablation's baseline: full-height 32x4 column patches, one token per column
        encoder = _model([32, 160], [32, 4], settings.width, settings.encoder_layers)["encoder"]
    else:
        encoder = {
            "model_type": "splice_line_encoder", "image_size": [32, 160], "channels": [32, 64, 128, 128],
            "hidden_size": settings.width, "num_hidden_layers": settings.encoder_layers, "num_attention_heads": 4,
            "intermediate_size": 2 * settings.width, "position_init_scale": settings.position_init_scale,
        }  # fmt: skip
    decoder = {
        "model_type": "gpt2", "n_embd": settings.width, "n_layer": settings.decoder_layers, "n_head": 4,
        "n_positions": 64, "resid_pdrop": settings.dropout, "embd_pdrop": settings.dropout,
        "attn_pdrop": settings.dropout,
    }  # fmt: skip
    return TrainConfig(
        encoder=encoder,
        decoder=decoder,
        model_kwargs={"ctc_weight": settings.ctc_weight} if settings.ctc_weight else {},
        data="builtin:ocr",
        data_options={"text": "mixed", "exclude_fonts": list(settings.held_out_fonts)},
        image_size=[160, 32],
        n_train=settings.n_train,
        n_eval=settings.n_eval,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_ratio=settings.warmup_ratio,
        bf16=settings.bf16,
        output_dir=output_dir,
        seed=settings.seed,
        # The loss is logged once per epoch, at its end (the demo prints it with that epoch's eval metrics).
        logging_steps=max(1, math.ceil(settings.n_train / settings.batch_size)),
        save_total_limit=1,
    )


def ocr_held_out_sets(settings: OcrDemo = OCR_DEMO) -> dict[str, dict]:
    """Built-in OCR options of each held-out set: unseen fonts (words and random strings) and unseen random strings."""
    held_out = list(settings.held_out_fonts)
    return {
        "words, held-out fonts": {"text": "words", "fonts": held_out},
        "random strings, held-out fonts": {"text": "random", "fonts": held_out},
        "random strings, training fonts": {"text": "random", "exclude_fonts": held_out},
        "words, training fonts": {"text": "words", "exclude_fonts": held_out},
    }


def run_demo(
    task: str = "shapes",
    output_dir: str | None = None,
    quick: bool = False,
    ocr: OcrDemo | None = None,
    shapes: TrainConfig | None = None,
) -> dict:
    r"""
    Train, evaluate, save and caption samples.

    Args:
        task: `"shapes"`, `"ocr"` or `"smallcap"` (`training.smallcap_demo`: only `output_dir` and `quick` apply).
        output_dir: where the model goes (default `splice-demo-<task>`).
        quick: a few steps on a handful of samples (a smoke test, not a useful model).
        ocr: the OCR demo's settings (default [`OCR_DEMO`]), e.g. a smaller variant.
        shapes: the shapes demo's `TrainConfig` (default `DEMOS["shapes"]`), e.g. an ablation row.

    Returns:
        The held-out metrics, plus `seconds` and `output_dir` (OCR: also `held_out`, the metrics of each set).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "ocr":
        return _run_ocr_demo(output_dir or "splice-demo-ocr", quick, ocr or OCR_DEMO)
    if task == "smallcap":  # SmallCap with a miniature pretrained CLIP and GPT-2: `splice.training.smallcap_demo`
        from ..training.smallcap_demo import QUICK_DEMO, SMALLCAP_DEMO, run_smallcap_demo

        return run_smallcap_demo(output_dir or "splice-demo-smallcap", QUICK_DEMO if quick else SMALLCAP_DEMO)
    from ..data import record_references
    from ..data.slots import parse_shapes_caption
    from ..models import VisionEncoderDecoderModel
    from ..training.pipeline import load_records, train

    config = dataclasses.replace(shapes or DEMOS[task], output_dir=output_dir or f"splice-demo-{task}")
    if quick:
        config = dataclasses.replace(config, n_train=16, n_eval=4, epochs=1, batch_size=8)
    start = time.time()
    metrics = train(config)
    seconds = time.time() - start

    model = VisionEncoderDecoderModel.from_pretrained(config.output_dir)
    samples = load_records(config.data, task, 4, seed=config.seed + 2, image_size=config.image_size)
    captions = model.caption([s["image"] for s in samples])
    print(f"\nsplice demo ({task}): {seconds:.0f} s on this machine; model saved to {Path(config.output_dir)}")
    counts = sorted({len(record_references(s)) for s in samples})  # generated alike: same counts
    references = f"all {counts[-1]} references" if counts[-1] > 1 else "its 1 reference"
    ngram = {k: v for k, v in metrics.items() if not k.startswith("slot_")}
    print(
        f"held-out metrics ({config.n_eval} items, each scored against {references}; the per-epoch eval_*_1ref "
        "metrics in the log score the one training target): " + ", ".join(f"{k} {v:.4f}" for k, v in ngram.items())
    )
    if "slot_sample" in metrics:
        print(
            f"held-out slot accuracy (what each caption names, parsed, vs the scene's true slots, {config.n_eval} "
            f"items): colour {metrics['slot_colour']:.3f}, shape {metrics['slot_shape']:.3f}, place/relation "
            f"{metrics['slot_where']:.3f}; captions with every slot right {metrics['slot_sample']:.3f}"
        )
    for caption, sample in zip(captions, samples):
        mark = "slots right" if parse_shapes_caption(caption) == sample["slots"] else "slots WRONG"
        print(f"  generated: {caption!r:50} reference: {sample['text']!r:50} {mark}")
    return metrics | {"seconds": seconds, "output_dir": config.output_dir}


def _run_ocr_demo(output_dir: str, quick: bool, settings: OcrDemo) -> dict:
    """Train the OCR demo, score it on the held-out sets, print samples; the model is saved for `splice caption`."""
    from ..inference import generate_for_records
    from ..models import VisionEncoderDecoderModel
    from ..training.epoch_log import log_one_line_per_epoch
    from ..training.metrics import ocr_metrics
    from ..training.pipeline import build_run, load_records, run_training

    if quick:
        settings = dataclasses.replace(settings, n_train=16, n_eval=4, n_held_out=1, epochs=1, batch_size=8)
    config = ocr_train_config(settings, output_dir)
    start = time.time()
    held_out, predictions, references, shown = {}, [], [], []
    run = build_run(config)
    # The progress bar and one line per epoch (loss and eval metrics), in place of transformers' log dicts. The loss is
    # logged at each epoch's end (`logging_steps` in `ocr_train_config`).
    log_one_line_per_epoch(run.trainer, config.epochs)
    run_training(run)
    model = VisionEncoderDecoderModel.from_pretrained(config.output_dir)
    processor = model.processor
    for i, (name, options) in enumerate(ocr_held_out_sets(settings).items()):
        records = load_records(config.data, "ocr", settings.n_held_out, settings.seed + 10 + i, None, options)
        texts = generate_for_records(model, records, processor.tokenizer, processor.image_processor, config.batch_size)
        truth = [r["text"] for r in records]
        held_out[name] = ocr_metrics(texts, truth)
        predictions, references = predictions + texts, references + truth
        shown += list(zip(texts, truth))[:2]
    seconds = time.time() - start
    metrics = ocr_metrics(predictions, references)
    print(f"\nsplice demo (ocr): {seconds:.0f} s on this machine; model saved to {Path(config.output_dir)}")
    print(
        f"held-out composition: {len(references)} rendered lines, {settings.n_held_out} per set below; the fonts "
        f"{', '.join(settings.held_out_fonts)} are never rendered in training; every line is drawn afresh (its own "
        "seed), so words come in new combinations, numbers and random strings are unseen"
    )
    for name, values in held_out.items():
        print(f"  {name:32} CER {values['cer']:.4f}  WER {values['wer']:.4f}  exact {values['exact_match']:.3f}")
    print(f"held-out metrics, all {len(references)} lines: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    for prediction, truth in shown:
        print(f"  generated: {prediction!r:32} truth: {truth!r}")
    return metrics | {"held_out": held_out, "seconds": seconds, "output_dir": config.output_dir}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice demo`."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="shapes",
        help="shapes: caption generated scenes of shapes; ocr: read rendered text lines; smallcap: SmallCap's "
        "retrieval and datastore-swap claims with a miniature pretrained CLIP and GPT-2",
    )
    parser.add_argument("--output-dir", default=None, help="where the model is saved (default: splice-demo-<task>)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a handful of samples (smoke test)")


def run(args: argparse.Namespace) -> None:
    """Run the demo chosen."""
    run_demo(args.task, args.output_dir, quick=args.quick)
