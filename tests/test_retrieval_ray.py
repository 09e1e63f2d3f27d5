"""`splice datastore build --ray`: captions embedded by a Ray Data actor pool on a local 2-CPU cluster (one per module)
make the same datastore as the single-process build: same keys, same captions retrieved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splice.cli import main
from splice.retrieval import Datastore, Embedder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

WORDS = ["red", "blue", "green", "circle", "square", "star", "left", "right", "top", "small", "big"]


def _build(captions: str, embedder: str, output: str, *flags: str) -> dict:
    code = main(["datastore", "build", "--captions", captions, "--embedder", embedder, "--output", output, *flags])
    assert code in (0, None)
    return json.loads((Path(output) / "datastore.json").read_text())


def test_ray_built_datastore_retrieves_what_the_single_process_one_does(clip_dir, tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"caption": " ".join(rng.choice(WORDS, size=rng.integers(2, 6))), "group": f"img-{i // 3}"} for i in range(300)
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    flags = ["--batch-size", "16", "--keep-vectors"]
    local = _build(str(corpus), str(clip_dir), str(tmp_path / "local"), *flags)
    on_ray = _build(str(corpus), str(clip_dir), str(tmp_path / "ray"), *flags, "--ray", "--workers", "2")
    assert {k: v for k, v in on_ray.items() if k != "fingerprint"} == {
        k: v for k, v in local.items() if k != "fingerprint"
    }
    assert on_ray["count"] == 300 and on_ray["max_group_size"] == 3

    keys = {
        name: np.fromfile(tmp_path / name / "vectors.f32", np.float32).reshape(300, -1) for name in ("local", "ray")
    }
    np.testing.assert_allclose(keys["ray"], keys["local"], atol=1e-5)  # row for row: the corpus order is kept
    embedder = Embedder.from_pretrained(str(clip_dir), device="cpu")
    stores = {name: Datastore.load(tmp_path / name, embedder) for name in ("local", "ray")}
    assert list(stores["ray"].captions) == [row["caption"] for row in rows]
    assert list(stores["ray"].groups) == [row["group"] for row in rows]
    queries = embedder.embed_texts(["red circle", "big blue star on the left", "small green square"])
    images = [Image.new("RGB", (32, 32), colour) for colour in ((220, 20, 20), (20, 20, 220), (20, 200, 20))]
    found = {
        name: (store.search(queries, 4), store.retrieve_for_images(images, 4), store.search(queries, 4, ["img-0"] * 3))
        for name, store in stores.items()
    }
    assert found["ray"] == found["local"]
