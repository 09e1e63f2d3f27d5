"""`splice demo --task smallcap`: SmallCap's claims, shown with parts pretrained in miniature, offline, on a CPU.

SmallCap (Ramos et al., CVPR 2023) joins a frozen CLIP vision tower and a frozen GPT-2 with a small reduced
cross-attention, prompts GPT-2 with captions retrieved for the image, and moves to a new domain by swapping the
datastore. Here, in a generated two-domain world (`splice.data.scenes`):

1. a tiny CLIP (`CLIPModel`, its contrastive loss) is pretrained on image–caption pairs of both domains, a tiny GPT-2
   (`GPT2LMHeadModel`) on caption text of both domains (`splice.training.miniature_parts`);
2. SmallCap trains only its cross-attention (r = 4) on domain `a`, with `splice train --preset smallcap`'s pipeline:
   the datastore holds the training captions embedded by CLIP's text tower, queried with the image's CLIP embedding
   (k = 4, the image's own captions excluded in training), in the paper's prompt;
3. on held-out images, with the learning rate chosen per model on a validation split and 3 seeds: retrieval vs no
   retrieval (same trainable parameters), r = 1 without retrieval (more parameters instead), the domain-`a` model on
   domain `b` with `a`'s datastore vs `b`'s, and how often the retrieved captions describe the query image; every
   difference with a 95% bootstrap interval over images (`splice.training.paired_bootstrap`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from ..data.builtin import Example
from ..data.scenes import DOMAINS, caption_slots, make_scenes, scene_groups
from ..inference import generate_for_records
from ..models import SmallCapModel
from ..models.smallcap import build_prompt
from ..retrieval import Datastore, Embedder
from . import paired_bootstrap as bootstrap
from .config import TrainConfig
from .miniature_parts import PartsSettings, pretrain_clip, pretrain_gpt2, prompt_tokenizer
from .pipeline import train

# The paper's template; the word tokenizer splits on spaces, so the full stop stands apart ("\n\n", which joins the
# captions, is a token of its own: see `prompt_tokenizer`).
TEMPLATE = "Similar images show {captions} . This image shows "
# name -> (retrieved captions per image, cross-attention reduction factor)
MODELS = {"retrieval r=4": (4, 4), "no retrieval r=4": (0, 4), "no retrieval r=1": (0, 1)}


@dataclasses.dataclass(frozen=True)
class SmallCapDemo:
    r"""
    The SmallCap demo's settings; `dataclasses.replace(SMALLCAP_DEMO, ...)` builds a smaller variant.

    Args:
        parts: the miniature CLIP and GPT-2 ([`PartsSettings`]).
        n_pretrain: scenes per domain for pretraining CLIP and GPT-2 (plus a tenth held out for their quality).
        n_train, n_val, n_test: SmallCap's domain-`a` training scenes, validation scenes (learning-rate choice) and
            test scenes per domain.
        n_datastore_b: domain-`b` scenes whose captions make `b`'s datastore.
        epochs, batch_size, learning_rates: SmallCap's training; each model's rate is chosen on validation CIDEr.
        seeds: one SmallCap run per seed and model (the first seed also chooses the rate).
        resamples: bootstrap resamples.
    """

    parts: PartsSettings = PartsSettings()
    n_pretrain: int = 2000
    n_train: int = 800
    n_val: int = 100
    n_test: int = 200
    n_datastore_b: int = 800
    epochs: float = 5
    batch_size: int = 32
    learning_rates: tuple[float, ...] = (4e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    resamples: int = 1000


SMALLCAP_DEMO = SmallCapDemo()
QUICK_DEMO = SmallCapDemo(
    parts=PartsSettings(clip_steps=150, gpt2_steps=100, clip_batch_size=32),
    n_pretrain=300,
    n_train=96,
    n_val=16,
    n_test=40,
    n_datastore_b=96,
    epochs=1,
    learning_rates=(3e-3,),
    seeds=(0, 1),
    resamples=200,
)


def run_smallcap_demo(output_dir: str = "splice-demo-smallcap", settings: SmallCapDemo = SMALLCAP_DEMO) -> dict:
    r"""
    Pretrain the parts, train the SmallCap models, run the experiments, print the table; save the models, both
    datastores (`datastore_a`, `datastore_b`) and `smallcap_results.json` under `output_dir`.

    Returns:
        The results written to `smallcap_results.json`.
    """
    start = time.time()
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    world = _generate_world(settings)
    parts = _pretrain_parts(root, world, settings)
    data = {split: _write_split(root / "data", split, world[split]) for split in ("train_a", "val_a")}
    runs = _train_models(root, data, settings)
    results = {"settings": dataclasses.asdict(settings), "parts": parts, "models": runs["chosen"]}
    results |= _experiments(root, runs, world, settings)
    results["seconds"] = time.time() - start
    results["machine"] = {"torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    (root / "smallcap_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nsplice demo (smallcap): {results['seconds']:.0f} s; models, datastores and results in {root}")
    return results


def _generate_world(settings: SmallCapDemo) -> dict[str, list[Example]]:
    """Every split, each from its own seed, so no split shares a drawn scene with another."""
    size, held = settings.parts.image_size, max(8, settings.n_pretrain // 10)
    splits = {
        "pretrain_a": ("a", settings.n_pretrain, 1), "pretrain_b": ("b", settings.n_pretrain, 2),
        "held_a": ("a", held, 3), "held_b": ("b", held, 4), "train_a": ("a", settings.n_train, 10),
        "val_a": ("a", settings.n_val, 11), "test_a": ("a", settings.n_test, 12),
        "store_b": ("b", settings.n_datastore_b, 13), "test_b": ("b", settings.n_test, 14),
    }  # fmt: skip
    return {name: make_scenes(n, domain, seed, size) for name, (domain, n, seed) in splits.items()}


def language_model_texts(scenes: Sequence[Example]) -> list[str]:
    r"""
    GPT-2's pretraining text: every caption, and per scene one list-shaped document ("Similar images show c2 \n\n ...
    c5 . This image shows c1": several descriptions of one thing, then another, as web text has) and one
    "This image shows c1". No image is involved.
    """
    texts = [caption for scene in scenes for caption in scene.references]
    texts += [build_prompt(s.references[1:], TEMPLATE) + s.references[0] for s in scenes]
    texts += [build_prompt(None) + s.references[0] for s in scenes]
    return texts


def _pretrain_parts(root: Path, world: dict[str, list[Example]], settings: SmallCapDemo) -> dict[str, Any]:
    pretrain = world["pretrain_a"] + world["pretrain_b"]
    held = world["held_a"] + world["held_b"]
    tokenizer = prompt_tokenizer(language_model_texts(pretrain + held))
    clip = pretrain_clip(
        root / "clip",
        [s.image for s in pretrain],
        [s.references for s in pretrain],
        [s.image for s in held],
        [s.references for s in held],
        tokenizer,
        settings.parts,
    )
    held_texts = [caption for scene in held for caption in scene.references]
    gpt2 = pretrain_gpt2(root / "gpt2", language_model_texts(pretrain), held_texts, tokenizer, settings.parts)
    print(f"CLIP (held-out, {len(held)} images): {clip}\nGPT-2 (held-out captions): {gpt2}", flush=True)
    return {"clip": clip, "gpt2": gpt2}


def _write_split(directory: Path, split: str, scenes: Sequence[Example]) -> Path:
    """The scenes as PNG files and a Karpathy-style caption JSON (the training caption first), for the pipeline."""
    folder = directory / split
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, scene in enumerate(scenes):
        scene.image.save(folder / f"{i}.png")
        captions = [scene.caption] + [c for c in scene.references if c != scene.caption]
        images.append({"filename": f"{i}.png", "filepath": split, "sentences": [{"raw": c} for c in captions]})
    path = directory / f"{split}.json"
    path.write_text(json.dumps({"images": images}))
    return path


def _train_models(root: Path, data: dict[str, Path], settings: SmallCapDemo) -> dict[str, Any]:
    """Each model at each learning rate on the first seed (validation CIDEr chooses), then the other seeds."""
    chosen: dict[str, Any] = {}
    for name, (k, reduce_factor) in MODELS.items():
        validation = {}
        for rate in settings.learning_rates:
            directory = _run_dir(root, name, rate, settings.seeds[0])
            validation[rate] = _train_one(directory, data, settings, k, reduce_factor, rate, settings.seeds[0])
        rate = max(validation, key=lambda r: validation[r]["cider"])
        directories = [str(_run_dir(root, name, rate, settings.seeds[0]))]
        for seed in settings.seeds[1:]:
            directory = _run_dir(root, name, rate, seed)
            _train_one(directory, data, settings, k, reduce_factor, rate, seed)
            directories.append(str(directory))
        trainable = json.loads((Path(directories[0]) / "eval_metrics.json").read_text())["trainable_parameters"]
        chosen[name] = {
            "learning_rate": rate,
            "validation_cider": {str(r): v["cider"] for r, v in validation.items()},
            "trainable_parameters": trainable,
            "directories": directories,
        }
        print(f"{name}: learning rate {rate} (validation CIDEr {chosen[name]['validation_cider']})", flush=True)
    return {"chosen": chosen}


def _run_dir(root: Path, name: str, rate: float, seed: int) -> Path:
    return root / "models" / f"{name.replace(' ', '-').replace('=', '')}-lr{rate:g}-seed{seed}"


def _train_one(
    directory: Path, data: dict[str, Path], settings: SmallCapDemo, k: int, reduce_factor: int, rate: float, seed: int
) -> dict[str, float]:
    root = directory.parents[1]
    config = TrainConfig(
        preset="smallcap",
        encoder=str(root / "clip"),
        decoder=str(root / "gpt2"),
        tokenizer=str(root / "gpt2"),
        data=str(data["train_a"]),
        eval_data=str(data["val_a"]),
        retrieval_embedder=str(root / "clip"),
        retrieval_k=k,
        model_kwargs={"cross_attention_reduce_factor": reduce_factor, "prompt_template": TEMPLATE},
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=rate,
        seed=seed,
        output_dir=str(directory),
        logging_steps=1000,
        save_total_limit=1,
    )
    metrics = train(config)
    for checkpoint in directory.glob("checkpoint-*"):  # the saved model is enough; optimizer states are not kept
        shutil.rmtree(checkpoint)
    return metrics


def _experiments(root: Path, runs: dict[str, Any], world: dict[str, list[Example]], settings: SmallCapDemo) -> dict:
    """Caption the test images with every model and seed; score, compare and analyse retrieval."""
    embedder = Embedder.from_pretrained(str(root / "clip"), device="cpu")
    first_retrieval = Path(runs["chosen"]["retrieval r=4"]["directories"][0])
    stores = {"a": Datastore.load(first_retrieval / "datastore", embedder)}
    store_b = world["store_b"]
    stores["b"] = Datastore.build([c for s in store_b for c in s.references], embedder)
    for name, store in stores.items():
        store.save(root / f"datastore_{name}")
    k = MODELS["retrieval r=4"][0]
    test = {"a": world["test_a"], "b": world["test_b"]}
    retrieved = {
        (domain, store): stores[store].retrieve_for_images([s.image for s in test[domain]], k)
        for domain, store in (("a", "a"), ("b", "a"), ("b", "b"))
    }
    # system -> (model, test domain, datastore or None)
    systems = {
        "a: retrieval r=4": ("retrieval r=4", "a", "a"),
        "a: no retrieval r=4": ("no retrieval r=4", "a", None),
        "a: no retrieval r=1": ("no retrieval r=1", "a", None),
        "b: retrieval r=4, a's datastore": ("retrieval r=4", "b", "a"),
        "b: retrieval r=4, b's datastore": ("retrieval r=4", "b", "b"),
        "b: no retrieval r=4": ("no retrieval r=4", "b", None),
    }
    scores, outputs = {}, {}
    for system, (model_name, domain, store) in systems.items():
        hits = retrieved[(domain, store)] if store else None
        captions = [_caption(d, test[domain], hits) for d in runs["chosen"][model_name]["directories"]]
        references = [s.references for s in test[domain]]
        per_seed = [bootstrap.per_image_scores(c, references) for c in captions]
        scores[system] = bootstrap.pool_seeds(per_seed)
        outputs[system] = {
            "cider": [bootstrap.cider_of(s) for s in per_seed],
            "bleu4": [bootstrap.bleu4_of(s) for s in per_seed],
            "objects_right": float(np.mean([_objects_right(c, test[domain]) for c in captions])),
            "copy_rate": float(np.mean([_copy_rate(c, hits) for c in captions])) if hits else None,
            "names_own_words": float(np.mean([_names_own_words(c, domain) for c in captions])),
            "repeats": float(np.mean([_repeats(c) for c in captions])),
            "samples": [
                {"generated": c, "reference": s.references[0], "retrieved": (hits[i] if hits else [])}
                for i, (c, s) in enumerate(zip(captions[0][:4], test[domain]))
            ],
        }
    comparisons = {
        "a: retrieval vs no retrieval (r=4)": ("a: retrieval r=4", "a: no retrieval r=4"),
        "a: retrieval r=4 vs no retrieval r=1": ("a: retrieval r=4", "a: no retrieval r=1"),
        "b: b's datastore vs a's datastore": ("b: retrieval r=4, b's datastore", "b: retrieval r=4, a's datastore"),
    }
    differences = {
        name: bootstrap.paired_difference(scores[first], scores[second], settings.resamples)
        for name, (first, second) in comparisons.items()
    }
    tokenizer = AutoTokenizer.from_pretrained(root / "gpt2")
    quality = {
        f"{domain} images, {store}'s datastore": _retrieval_quality(hits, test[domain], stores[store], tokenizer)
        for (domain, store), hits in retrieved.items()
    }
    return {"systems": outputs, "differences": differences, "retrieval": quality}


def _caption(directory: str, scenes: Sequence[Example], retrieved: list[list[str]] | None) -> list[str]:
    model = SmallCapModel.from_pretrained(directory).eval()
    records = [{"image": s.image} | ({"retrieved": retrieved[i]} if retrieved else {}) for i, s in enumerate(scenes)]
    if retrieved is None:
        records = [r | {"retrieved": []} for r in records]  # the no-retrieval prompt, as in training
    processor = model.processor
    return generate_for_records(model, records, processor.tokenizer, processor.image_processor, batch_size=50)


def _objects_right(captions: Sequence[str], scenes: Sequence[Example]) -> float:
    """Fraction of captions naming exactly the image's groups (counts, colours, shapes)."""
    return float(np.mean([caption_slots(c) == scene_groups(s.slots) for c, s in zip(captions, scenes)]))


def _names_own_words(captions: Sequence[str], domain: str) -> float:
    """Fraction of captions naming a colour or shape that only `domain` has (for `b`: words never trained on)."""
    words = {name: set(vocabulary.colours + vocabulary.shapes) for name, vocabulary in DOMAINS.items()}
    only = words[domain].difference(*(w for name, w in words.items() if name != domain))
    forms = only | {w + "s" for w in only} | {w + "es" for w in only}
    return float(np.mean([any(word in forms for word in c.split()) for c in captions]))


def _repeats(captions: Sequence[str]) -> float:
    """Fraction of degenerate captions: one word three or more times in a row."""
    return float(np.mean([any(a == b == c for a, b, c in zip(w, w[1:], w[2:])) for w in (c.split() for c in captions)]))


def _copy_rate(captions: Sequence[str], retrieved: Sequence[Sequence[str]]) -> float:
    """Fraction of generated captions that repeat one of their retrieved captions word for word."""
    return float(np.mean([c.strip() in {r.strip() for r in hits} for c, hits in zip(captions, retrieved)]))


def _retrieval_quality(
    retrieved: list[list[str]], scenes: Sequence[Example], store: Datastore, tokenizer: Any
) -> dict[str, float]:
    """How often the retrieved captions name the query image's groups, against a random caption of the datastore."""
    truth = [scene_groups(s.slots) for s in scenes]
    store_slots = [caption_slots(c) for c in store.captions]
    prompts = [build_prompt(hits, TEMPLATE) for hits in retrieved]
    prompt_tokens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return {
        "top1_describes": float(np.mean([bool(h) and caption_slots(h[0]) == t for h, t in zip(retrieved, truth)])),
        "any_of_k_describes": float(np.mean([any(caption_slots(c) == t for c in h) for h, t in zip(retrieved, truth)])),
        "share_of_k_describing": float(
            np.mean([np.mean([caption_slots(c) == t for c in h]) for h, t in zip(retrieved, truth)])
        ),
        "chance_per_caption": float(np.mean([np.mean([s == t for s in store_slots]) for t in truth])),
        "mean_prompt_tokens": float(np.mean(prompt_tokens)),
    }


def format_table(results: dict) -> str:
    """The results as Markdown: the systems (mean ± std over seeds), the differences with intervals, retrieval."""
    systems, differences = results["systems"], results["differences"]
    seeds = len(results["settings"]["seeds"])
    lines = [
        f"| test images | model, datastore | CIDEr (mean ± std, {seeds} seeds) | BLEU-4 | objects right | copy rate | "
        "names own-domain words | repeats a word 3× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in systems.items():
        domain, system = name.split(": ", 1)
        copy = "–" if row["copy_rate"] is None else f"{row['copy_rate']:.3f}"
        lines.append(
            f"| {domain} | {system} | {_mean_std(row['cider'])} | {_mean_std(row['bleu4'])} | "
            f"{row['objects_right']:.3f} | {copy} | {row['names_own_words']:.3f} | {row['repeats']:.3f} |"
        )
    lines += ["", "| difference (first − second) | Δ CIDEr [95% CI] | Δ BLEU-4 [95% CI] |", "|---|---|---|"]
    for name, values in differences.items():
        cells = [f"{v['difference']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" for v in values.values()]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "| retrieval (k = 4) | top-1 describes | any of 4 | share of 4 | chance | prompt tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, q in results["retrieval"].items():
        lines.append(
            f"| {name} | {q['top1_describes']:.3f} | {q['any_of_k_describes']:.3f} | "
            f"{q['share_of_k_describing']:.3f} | {q['chance_per_caption']:.3f} | {q['mean_prompt_tokens']:.1f} |"
        )
    clip, gpt2 = results["parts"]["clip"], results["parts"]["gpt2"]
    trainable = {n: m["trainable_parameters"] for n, m in results["models"].items()}
    lines += [
        "",
        f"CLIP image→text recall@1 {clip['recall@1']:.3f} (chance {clip['chance@1']:.3f}), recall@5 "
        f"{clip['recall@5']:.3f} (chance {clip['chance@5']:.3f}); GPT-2 held-out perplexity {gpt2['perplexity']:.2f}; "
        f"trainable parameters: {trainable}",
    ]
    return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"
