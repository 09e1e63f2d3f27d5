"""`splice demo --task smallcap --quick` pretrains a miniature CLIP and GPT-2, trains SmallCap, runs every experiment
and saves what it says; the pieces it rests on (scene world, tokenizers, bootstrap) are checked on their own."""

import json
import math
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

import splice
from splice.cli import main
from splice.data.scenes import DOMAINS, caption_slots, make_scenes, scene_groups
from splice.retrieval import Datastore, read_datastore_meta
from splice.training import paired_bootstrap
from splice.training.metrics import caption_metrics
from splice.training.miniature_parts import CLIP_EOS_ID, clip_tokenizer, prompt_tokenizer
from splice.training.smallcap_demo import TEMPLATE, language_model_texts


def test_scene_captions_name_what_is_drawn_and_domains_share_some_words():
    for domain in DOMAINS:
        scenes = make_scenes(200, domain, seed=3)
        assert all(len(set(s.references)) == 5 and s.caption in s.references for s in scenes)
        assert all(caption_slots(r) == scene_groups(s.slots) for s in scenes for r in s.references)
        assert {g[0] for s in scenes for g in s.slots.groups} == {1, 2, 3}
        assert not [r for s in scenes for r in s.references if re.search(r"\ba [aeiou]", r)]  # "an orange star"
    words = {d: {w for s in make_scenes(300, d, seed=4) for r in s.references for w in r.split()} for d in DOMAINS}
    assert {"red", "circle"} <= words["a"] & words["b"]
    assert {"star", "green"} <= words["a"] - words["b"] and {"hexagon", "pink"} <= words["b"] - words["a"]
    first, again = make_scenes(3, "b", seed=9), make_scenes(3, "b", seed=9)
    assert [s.references for s in first] == [s.references for s in again]
    assert np.array_equal(np.asarray(first[0].image), np.asarray(again[0].image))


def test_prompt_tokenizer_keeps_the_caption_separator_and_clip_moves_end_of_text():
    tokenizer = prompt_tokenizer(language_model_texts(make_scenes(40, "a", seed=1)))
    prompt = splice.models.smallcap.build_prompt(["a red circle", "two blue stars"], TEMPLATE)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tokens[tokens.index("circle") + 1] == "\n\n" and "[UNK]" not in tokens
    clip = clip_tokenizer(tokenizer)
    ids = clip("a red circle")["input_ids"]
    assert ids[-1] == CLIP_EOS_ID == clip.eos_token_id and ids[:-1] == tokenizer("a red circle")["input_ids"][:-1]


def test_bootstrap_scores_match_the_metrics_and_intervals_cover_the_difference():
    scenes = make_scenes(30, "a", seed=2)
    references = [s.references for s in scenes]
    good = [s.references[0] for s in scenes]
    bad = [s.references[0].replace("circle", "square").replace("red", "blue") for s in scenes]
    scores = paired_bootstrap.per_image_scores(bad, references)
    expected = caption_metrics(bad, references, meteor=False)
    assert math.isclose(paired_bootstrap.cider_of(scores), expected["cider"], rel_tol=1e-9)
    assert math.isclose(paired_bootstrap.bleu4_of(scores), expected["bleu4"], rel_tol=1e-9)
    difference = paired_bootstrap.paired_difference(paired_bootstrap.per_image_scores(good, references), scores, 200)
    for values in difference.values():
        assert 0 < values["low"] <= values["difference"] <= values["high"]


@pytest.mark.slow  # pretrains two models and trains six SmallCap runs (about 3 minutes on a loaded 2-core machine)
def test_smallcap_demo_quick_runs_every_experiment_and_saves_it(tmp_path, capsys):
    main(["demo", "--task", "smallcap", "--output-dir", str(tmp_path), "--quick"])
    printed = capsys.readouterr().out
    assert "| a | retrieval r=4 |" in printed and "b: b's datastore vs a's datastore" in printed
    results = json.loads((tmp_path / "smallcap_results.json").read_text())

    clip, gpt2 = results["parts"]["clip"], results["parts"]["gpt2"]
    assert clip["recall@1"] > 3 * clip["chance@1"] and clip["recall@5"] > 3 * clip["chance@5"]
    vocabulary = len(AutoTokenizer.from_pretrained(tmp_path / "gpt2"))
    assert 1 < gpt2["perplexity"] < vocabulary / 4  # a uniform guess scores the vocabulary size

    in_domain = results["retrieval"]["a images, a's datastore"]
    assert in_domain["share_of_k_describing"] > 3 * in_domain["chance_per_caption"] > 0
    assert len(results["systems"]) == 6 and len(results["differences"]) == 3
    for row in results["systems"].values():
        assert len(row["cider"]) == len(row["bleu4"]) == 2 and all(v >= 0 for v in row["cider"] + row["bleu4"])
        assert 0 <= row["objects_right"] <= 1 and len(row["samples"]) == 4
    for metrics in results["differences"].values():
        assert all(v["low"] <= v["high"] and math.isfinite(v["difference"]) for v in metrics.values())

    trainable = {name: model["trainable_parameters"] for name, model in results["models"].items()}
    assert trainable["retrieval r=4"] == trainable["no retrieval r=4"] < trainable["no retrieval r=1"]
    model = splice.SmallCapModel.from_pretrained(results["models"]["retrieval r=4"]["directories"][0])
    assert model.config.cross_attention_reduce_factor == 4 and model.config.retrieval_k == 4
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable["retrieval r=4"]
    for name in ("a", "b"):
        meta = read_datastore_meta(tmp_path / f"datastore_{name}")
        assert meta["keys"] == "text" and meta["embedder"]["class"] == "CLIPModel"
        assert len(Datastore.load(tmp_path / f"datastore_{name}")) == meta["count"] > 0
