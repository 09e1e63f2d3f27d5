"""SmallCap on built-in data: (a) retrieval vs no retrieval, (b) training-free transfer by swapping the datastore.

SmallCap relies on a pretrained CLIP encoder and a pretrained GPT-2, which cannot be downloaded here. The stand-ins:
- the decoder: a small GPT-2 language model first trained on caption *text* of both shapes domains (its "general
  language knowledge", as GPT-2's pretraining covers words a captioning set never shows), then frozen. Its text
  includes prompt-shaped sequences ("Similar images show c1 ... This image shows c5", five captions of one scene), as a
  stand-in for GPT-2's ability to continue such lists; no image is involved;
- the encoder: a small ViT with random weights, frozen (features that keep colour and layout, not semantics);
- retrieval keys: image-to-image, the frozen encoder's mean-pooled states (no CLIP text tower to embed captions).
Only the reduced cross-attention (r=4) trains, on images of domain "a" (red/green/... squares, circles, ...).

(a) two SmallCap models on domain a, the same trainable parameters: with retrieved captions vs with the plain prompt;
    metrics on held-out domain-a images.
(b) the retrieval model captions domain-"b" images (new colour and shape words) with the domain-a datastore, then with
    a domain-b datastore (captions of other domain-b images), without retraining.

Run: `python examples/smallcap_retrieval.py [--quick]`; prints a table and writes `smallcap_results.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel

from splice.data.builtin import make_dataset, train_tokenizer
from splice.models.smallcap import NO_RETRIEVAL_PROMPT, SmallCapModel, build_prompt
from splice.retrieval import Datastore, frozen_encoder_embedder
from splice.training.config import TrainConfig
from splice.training.pipeline import evaluate, load_records, train

# The word-level tokenizer splits on spaces only, so the full stop stands apart.
TEMPLATE = "Similar images show {captions} . This image shows "


def pretrain_language_model(directory: Path, texts: list[str], steps: int, width: int = 128) -> None:
    """The GPT-2 stand-in: a small causal LM trained on caption text, saved with its tokenizer."""
    tokenizer = train_tokenizer(texts)
    config = GPT2Config(
        n_embd=width, n_layer=3, n_head=4, n_positions=160, vocab_size=len(tokenizer),
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        batch = [texts[i] for i in torch.randint(len(texts), (64,), generator=generator)]
        ids = tokenizer([tokenizer.bos_token + " " + t for t in batch], padding=True, return_tensors="pt")
        labels = ids.input_ids.masked_fill(ids.attention_mask == 0, -100)
        loss = model(**ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(f"language model step {step}: loss {loss.item():.3f}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def frozen_encoder(directory: Path, width: int = 128) -> None:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=width, num_hidden_layers=3, num_attention_heads=4, intermediate_size=2 * width,
        image_size=64, patch_size=8,
    )  # fmt: skip
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        directory
    )


def main(quick: bool = False, output: str = "smallcap-demo") -> dict:
    start = time.time()
    root = Path(output)
    n_train, n_eval, lm_steps, epochs = (64, 16, 20, 1) if quick else (2000, 200, 600, 6)
    # Caption text of both domains for the language model: scenes generated separately from everything below.
    scenes = [e for domain in "ab" for e in make_dataset("shapes", n_train, seed=7, domain=domain)]
    texts = [c for e in scenes for c in e.references]
    texts += [build_prompt(e.references[1:], TEMPLATE) + e.references[0] for e in scenes]
    texts += [NO_RETRIEVAL_PROMPT + e.references[0] for e in scenes]
    pretrain_language_model(root / "lm", texts, lm_steps)
    frozen_encoder(root / "encoder")

    base = dict(
        preset="smallcap", encoder=str(root / "encoder"), decoder=str(root / "lm"), tokenizer=str(root / "lm"),
        data="builtin:shapes", data_options={"domain": "a"}, n_train=n_train, n_eval=n_eval, epochs=epochs,
        learning_rate=2e-3, batch_size=32,
        model_kwargs={"cross_attention_reduce_factor": 4, "prompt_template": TEMPLATE},
    )  # fmt: skip
    results = {}
    for name, k in (("retrieval", 4), ("no_retrieval", 0)):
        config = TrainConfig(**base, retrieval_k=k, output_dir=str(root / name))
        results[f"a:{name}"] = train(config) | {
            "trainable": json.loads((root / name / "eval_metrics.json").read_text())["trainable_parameters"]
        }

    # (b) Domain b, no retraining: retrieval from the domain-a datastore vs a domain-b datastore.
    model = SmallCapModel.from_pretrained(root / "retrieval").eval()
    processor = model.processor
    held_out = load_records("builtin:shapes", "caption", n_eval, 101, None, {"domain": "b"})
    store_b = load_records("builtin:shapes", "caption", n_train, 102, None, {"domain": "b"})
    embedder = frozen_encoder_embedder(model.encoder, processor.image_processor)
    stores = {
        "a_datastore": Datastore.load(root / "retrieval" / "datastore", embedder),
        "b_datastore": Datastore.build(
            [c for r in store_b for c in r["references"]],
            embedder,
            key_kind="image",
            images=[r["image"] for r in store_b for _ in r["references"]],
        ),  # fmt: skip
    }
    for name, store in stores.items():
        retrieved = store.retrieve_for_images([r["image"] for r in held_out], k=model.config.retrieval_k)
        records = [r | {"retrieved": c} for r, c in zip(held_out, retrieved)]
        results[f"b:{name}"] = evaluate(model, records, processor.tokenizer, processor.image_processor, "caption")
    results["seconds"] = time.time() - start
    print("\n| setting | bleu4 | rouge_l | cider | meteor |\n|---|---|---|---|---|")
    for name, metrics in results.items():
        if isinstance(metrics, dict):
            cells = " | ".join(
                f"{metrics.get(key, float('nan')):.3f}" for key in ("bleu4", "rouge_l", "cider", "meteor")
            )
            print(f"| {name} | {cells} |")
    print(f"trainable parameters: {results['a:retrieval']['trainable']:,} (both models); {results['seconds']:.0f} s")
    (root / "smallcap_results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps on a handful of samples")
    parser.add_argument("--output", default="smallcap-demo")
    args = parser.parse_args()
    main(args.quick, args.output)
