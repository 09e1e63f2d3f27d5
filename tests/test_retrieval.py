"""Retrieval datastore: embedder, exact search with group exclusion, save/load, image keys, cache and CLI (offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from splice.cli import main
from splice.retrieval import Datastore, Embedder, retrieve_cached

CORPUS = [
    "a red circle on the left",
    "a red square at the top",
    "a blue star in the centre",
    "a blue circle on the right",
    "a green triangle at the bottom",
    "a green star on the left",
    "two red shapes",
    "a yellow square in the centre",
]
WORDS = sorted({word for caption in CORPUS for word in caption.split()})
COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230), "green": (20, 200, 20), "yellow": (230, 230, 20)}


def bag_of_words(texts: list[str]) -> np.ndarray:
    """Word counts over the corpus vocabulary: exact, deterministic text embeddings."""
    vectors = np.zeros((len(texts), len(WORDS)), np.float32)  # [B, V]
    for row, text in enumerate(texts):
        for word in text.split():
            vectors[row, WORDS.index(word)] += 1
    return vectors


def colour_name(image: Image.Image) -> str:
    mean = np.asarray(image, np.float32).reshape(-1, 3).mean(0)
    return min(COLOURS, key=lambda name: np.linalg.norm(mean - COLOURS[name]))


class Counting:
    """A fake embedder's functions that count the items they embed."""

    def __init__(self):
        self.texts = self.images = 0

    def text_fn(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return bag_of_words(texts)

    def image_fn(self, images: list[Image.Image]) -> np.ndarray:
        # An image of a colour lands on that colour's word, so text keys can be searched with images.
        self.images += len(images)
        return bag_of_words([colour_name(image) for image in images])

    def embedder(self, identity: dict | None = None) -> Embedder:
        return Embedder.from_functions(self.text_fn, self.image_fn, identity or {"name_or_path": "bag-of-words"})


def solid(colour: str, shade: float = 1.0) -> Image.Image:
    return Image.new("RGB", (8, 8), tuple(int(c * shade) for c in COLOURS[colour]))


def test_pretrained_embedder_is_normalised_and_batch_independent(clip_dir, tmp_path):
    embedder = Embedder.from_pretrained(str(clip_dir), device="cpu")
    assert embedder.identity == {"name_or_path": str(clip_dir.resolve()), "class": "CLIPModel", "dim": 8}

    texts = embedder.embed_texts(CORPUS[:5], batch_size=2)  # [5, 8]
    assert texts.shape == (5, 8) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    # Padding to a batch's longest text does not change an embedding.
    np.testing.assert_allclose(embedder.embed_texts(CORPUS[:1]), texts[:1], atol=1e-5)

    solid("green").resize((40, 40)).save(tmp_path / "green.png")
    images = embedder.embed_images([solid("red").resize((50, 30)), tmp_path / "green.png"])  # [2, 8]
    assert images.shape == (2, 8) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)

    datastore = Datastore.build(CORPUS, embedder)
    retrieved = datastore.retrieve_for_images([solid("blue"), tmp_path / "green.png"], k=3)
    assert [len(captions) for captions in retrieved] == [3, 3]
    assert all(caption in CORPUS for captions in retrieved for caption in captions)


def test_search_finds_each_caption_from_its_own_embedding():
    embedder = Counting().embedder()
    datastore = Datastore.build(CORPUS, embedder)
    assert len(datastore) == len(CORPUS) and datastore.dim == len(WORDS)
    assert datastore.search(embedder.embed_texts(CORPUS), k=1) == [[caption] for caption in CORPUS]
    # Unnormalised queries rank the same.
    assert datastore.search(3 * bag_of_words(CORPUS), k=1) == [[caption] for caption in CORPUS]


def test_exclusion_drops_own_group_even_when_nearest():
    # Image "0" has more captions than k, all nearer to the query than anything else.
    captions = ["a red circle", "a red circle on the left", "red circle", "a red circle at the top"] + CORPUS[2:]
    groups = ["0", "0", "0", 0] + [str(i) for i in range(1, len(CORPUS) - 1)]
    datastore = Datastore.build(captions, Counting().embedder(), groups=groups)
    query = bag_of_words(["a red circle"])  # [1, V]

    assert set(datastore.search(query, k=3)[0]) < set(captions[:4])
    retrieved = datastore.search(query, k=3, exclude_groups=[0])[0]  # an int group matches its str
    assert len(retrieved) == 3 and not set(retrieved) & set(captions[:4])
    assert datastore.search(query, k=3, exclude_groups=[None]) == datastore.search(query, k=3)


def test_duplicate_captions_are_returned_once_and_k_is_still_met():
    captions = ["a red circle"] * 6 + CORPUS
    datastore = Datastore.build(captions, Counting().embedder())
    retrieved = datastore.search(bag_of_words(["a red circle"]), k=4)[0]
    assert retrieved[0] == "a red circle" and len(retrieved) == len(set(retrieved)) == 4
    # k beyond the distinct captions gives them all.
    assert sorted(datastore.search(bag_of_words(["red"]), k=50)[0]) == sorted(set(captions))


def test_batched_search_equals_one_by_one():
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(WORDS, size=5)) for _ in range(200)]
    groups = [str(i // 5) for i in range(200)]
    datastore = Datastore.build(captions, Counting().embedder(), groups=groups)
    queries = rng.normal(size=(40, len(WORDS))).astype(np.float32)  # [Q, V]: enough for FAISS's BLAS path
    exclude = [str(i) for i in range(40)]

    batched = datastore.search(queries, k=5, exclude_groups=exclude)
    single = [datastore.search(q[None], k=5, exclude_groups=[g])[0] for q, g in zip(queries, exclude)]
    assert batched == single
    assert all(len(captions) == 5 for captions in batched)


def test_save_load_round_trip_and_identity_check(tmp_path):
    embedder = Counting().embedder()
    datastore = Datastore.build(CORPUS, embedder, groups=range(len(CORPUS)))
    datastore.save(tmp_path / "store")
    meta = json.loads((tmp_path / "store" / "datastore.json").read_text())
    assert meta["embedder"] == {"name_or_path": "bag-of-words"} and meta["keys"] == "text"
    assert (meta["dim"], meta["count"]) == (len(WORDS), len(CORPUS)) and "splice_version" in meta

    loaded = Datastore.load(tmp_path / "store", embedder)
    assert (loaded.captions, loaded.groups) == (datastore.captions, datastore.groups)
    assert loaded.fingerprint == datastore.fingerprint
    images = [solid("red"), solid("blue"), solid("green")]
    assert loaded.retrieve_for_images(images, k=3, exclude_groups=[0, 2, None]) == datastore.retrieve_for_images(
        images, k=3, exclude_groups=[0, 2, None]
    )

    other = Counting().embedder({"name_or_path": "another-encoder"})
    with pytest.raises(ValueError, match="bag-of-words.*another-encoder"):
        Datastore.load(tmp_path / "store", other)
    with pytest.raises(ValueError, match="no embedder"):
        Datastore.load(tmp_path / "store").retrieve_for_images(images)


def test_image_keys_retrieve_captions_of_the_nearest_image():
    counting = Counting()
    red, blue = solid("red"), solid("blue")
    # One image per caption; an image with several captions is repeated and embedded once.
    captions = ["the first picture", "a picture of something", "the second picture"]
    datastore = Datastore.build(captions, counting.embedder(), key_kind="image", images=[red, red, blue])
    assert counting.images == 2 and counting.texts == 0 and datastore.key_kind == "image"

    assert datastore.retrieve_for_images([solid("red", 0.8)], k=2) == [captions[:2]]
    assert datastore.retrieve_for_images([solid("blue", 0.8)], k=1) == [captions[2:]]
    with pytest.raises(ValueError, match="one per caption"):
        Datastore.build(captions, counting.embedder(), key_kind="image", images=[red])


def test_retrieve_cached_computes_once_and_reuses(tmp_path):
    counting = Counting()
    datastore = Datastore.build(CORPUS, counting.embedder(), groups=range(len(CORPUS)))
    datastore.save(tmp_path / "store")
    images, keys, groups = [solid("red"), solid("blue"), solid("green")], ["r.png", "b.png", "g.png"], [0, 2, None]
    cache = tmp_path / "cache" / "retrieved.json"

    first = retrieve_cached(datastore, images, keys, k=2, exclude_groups=groups, cache_path=cache)
    assert first == datastore.retrieve_for_images(images, k=2, exclude_groups=groups)
    counting.images = 0
    assert retrieve_cached(datastore, images, keys, k=2, exclude_groups=groups, cache_path=cache) == first
    assert counting.images == 0

    # A later run: a fresh embedder and datastore loaded from disk share the fingerprint, so nothing is embedded.
    fresh = Counting()
    reloaded = Datastore.load(tmp_path / "store", fresh.embedder())
    assert retrieve_cached(reloaded, images, keys, k=2, exclude_groups=groups, cache_path=cache) == first
    assert fresh.images == 0

    # Another k, another exclusion or another datastore are recomputed (only for what changed).
    retrieve_cached(reloaded, images, keys, k=3, exclude_groups=groups, cache_path=cache)
    assert fresh.images == 3
    retrieve_cached(reloaded, images, keys, k=2, exclude_groups=[0, 2, 4], cache_path=cache)
    assert fresh.images == 4
    bigger = Datastore.build(CORPUS + ["a red star"], fresh.embedder())
    retrieve_cached(bigger, images, keys, k=2, cache_path=cache)
    assert fresh.images == 7
    assert len(json.loads(cache.read_text())) == 3  # (datastore, k) namespaces


def _cli(argv: list[str]) -> None:
    main(argv)  # the real command line (errors raise: argv is given)


def test_cli_build_and_query(clip_dir, tmp_path, capsys):
    (tmp_path / "captions.txt").write_text("\n".join(CORPUS) + "\n\n")
    _cli(
        ["datastore", "build", "--captions", str(tmp_path / "captions.txt"), "--embedder", str(clip_dir)]
        + ["--output", str(tmp_path / "text-store")]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == len(CORPUS) and summary["dim"] == 8 and summary["keys"] == "text"

    for colour in ("red", "blue"):
        solid(colour).save(tmp_path / f"{colour}.png")
    # The embedder defaults to the one saved with the datastore.
    _cli(["datastore", "query", str(tmp_path / "text-store"), str(tmp_path / "*.png"), "--k", "2"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(tmp_path / "blue.png"), str(tmp_path / "red.png")]
    assert all(len(line["captions"]) == 2 and set(line["captions"]) <= set(CORPUS) for line in lines)

    # Built-in shapes: every reference of each generated image, with image keys.
    _cli(
        ["datastore", "build", "--captions", "builtin:shapes:b", "--n", "3", "--keys", "image"]
        + ["--embedder", str(clip_dir), "--output", str(tmp_path / "shapes-store")]
    )
    shapes = Datastore.load(tmp_path / "shapes-store")
    assert len(shapes) == 15 and shapes.key_kind == "image" and shapes.groups[::5] == ["0", "1", "2"]

    # JSONL with image paths relative to the file.
    rows = [
        {"caption": "a red thing", "group": "r", "image": "red.png"},
        {"caption": "a blue thing", "image": "blue.png"},
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    _cli(
        ["datastore", "build", "--captions", str(tmp_path / "corpus.jsonl"), "--keys", "image"]
        + ["--embedder", str(clip_dir), "--output", str(tmp_path / "jsonl-store")]
    )
    capsys.readouterr()
    _cli(
        ["datastore", "query", str(tmp_path / "jsonl-store"), str(tmp_path / "red.png"), "--k", "1"]
        + ["--embedder", str(clip_dir)]
    )
    assert json.loads(capsys.readouterr().out)["captions"] == ["a red thing"]  # its own image is the nearest key
    assert Datastore.load(tmp_path / "jsonl-store").groups == ["r", None]

    with pytest.raises(ValueError, match='needs an "image"'):  # ConfigError: one line + exit 2 from the console
        _cli(
            ["datastore", "build", "--captions", str(tmp_path / "captions.txt"), "--keys", "image"]
            + ["--embedder", str(clip_dir), "--output", str(tmp_path / "bad")]
        )


def test_cli_query_skips_and_names_unreadable_images_and_refuses_a_non_clip_embedder(clip_dir, tmp_path, capsys):
    (tmp_path / "captions.txt").write_text("\n".join(CORPUS) + "\n")
    store = str(tmp_path / "store")
    _cli(["datastore", "build", "--captions", str(tmp_path / "captions.txt"), "--embedder", str(clip_dir)]
         + ["--output", store])  # fmt: skip
    solid("red").save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    capsys.readouterr()
    _cli(["datastore", "query", store, str(tmp_path / "*.png"), "--k", "1"])
    out = capsys.readouterr()
    assert [json.loads(line)["file"] for line in out.out.splitlines()] == [str(tmp_path / "red.png")]
    assert "skipped 1 unreadable image(s): " + str(tmp_path / "broken.png") in out.err
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")  # fmt: skip
    with pytest.raises(ValueError, match=r"loads as BertModel, which has no `get_text_features`.*CLIP-style"):
        _cli(["datastore", "build", "--captions", str(tmp_path / "captions.txt"), "--embedder",
              str(tmp_path / "bert"), "--output", str(tmp_path / "bad")])  # fmt: skip
