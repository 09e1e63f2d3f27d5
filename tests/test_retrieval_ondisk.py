"""The datastore on disk: the index chosen by size, streamed builds equal to in-memory ones, IVF shards merged on disk,
memory-mapped loading, and clear errors for missing or corrupt files (offline, random bag-of-words embeddings)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import splice.cli.datastore as cli_datastore
import splice.retrieval.index as index_module
from splice.retrieval import (
    FLAT_LIMIT,
    INDEX_KINDS,
    Datastore,
    Embedder,
    build_datastore,
    caption_batches,
    choose_index,
    retrieve_cached,
)

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink"]
SHAPES = ["circle", "square", "star", "triangle", "cross", "ring"]
PLACES = ["on the left", "on the right", "at the top", "at the bottom", "in the centre"]
# Every caption of the grid, then some again (duplicates); the group is the caption's shape.
CAPTIONS = [f"a {c} {s} {p}" for c in COLOURS for s in SHAPES for p in PLACES]
CAPTIONS += CAPTIONS[::7]
GROUPS = [caption.split()[2] for caption in CAPTIONS]
DIM = 16


def word_vectors(texts: list[str]) -> np.ndarray:
    """The sum of a fixed random vector per word: deterministic embeddings whose neighbours share words."""
    vectors = np.zeros((len(texts), DIM), np.float32)  # [B, D]
    for row, text in enumerate(texts):
        for word in text.split():
            seed = int.from_bytes(word.encode()[:8].ljust(8, b"_"), "little")
            vectors[row] += np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vectors


EMBEDDER = Embedder.from_functions(word_vectors, None, {"name_or_path": "word-vectors"})
QUERIES = word_vectors(["red star", "a blue ring at the top", "white", "green cross in the centre", "circle"])


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """One FAISS (OpenMP) thread: the indexes are tiny, and idle threads spin when other processes share the CPU."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def batches(size: int):
    """The corpus as a stream of `(captions, groups)` batches of `size`."""
    for start in range(0, len(CAPTIONS), size):
        yield CAPTIONS[start : start + size], GROUPS[start : start + size]


def test_auto_rule_is_flat_up_to_the_limit_then_ivf_sq8():
    assert choose_index(1000, 384, flat_limit=1000) == "Flat"
    assert choose_index(1001, 384, flat_limit=1000) == "IVF16,SQ8"  # few keys: at least 39 per list
    assert choose_index(1_000_000, 384) == "IVF1024,SQ8" and choose_index(4_000_000, 512) == "IVF2048,SQ8"
    assert choose_index(1001, 384, "ivfpq") == "IVF16,PQ96x4" and choose_index(10**6, 384, "ivfpq") == "IVF1024,PQ96"
    assert choose_index(1_000_000, 384, "ivfflat") == "IVF1024,Flat" and choose_index(10, 384, "flat") == "Flat"
    assert choose_index(10, 384, "IVF8,SQ8") == "IVF8,SQ8"  # a factory string is passed through
    # The command line keeps its own copies (to stay light for --help).
    assert (cli_datastore.INDEX_KINDS, cli_datastore.FLAT_LIMIT) == (INDEX_KINDS, FLAT_LIMIT)


def test_build_picks_flat_below_and_ivf_above_an_injected_limit(tmp_path):
    small = build_datastore(batches(50), EMBEDDER, tmp_path / "small", flat_limit=len(CAPTIONS), progress=False)
    large = build_datastore(batches(50), EMBEDDER, tmp_path / "large", flat_limit=len(CAPTIONS) - 1, progress=False)
    assert small["index"] == "Flat" and not (tmp_path / "small" / "index.ivfdata").exists()
    assert large["index"].startswith("IVF") and large["index"].endswith(",SQ8")
    assert (tmp_path / "large" / "index.ivfdata").exists()
    assert small["count"] == large["count"] == len(CAPTIONS) and large["max_group_size"] == GROUPS.count("circle")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet", "stream"])
def test_a_streamed_flat_build_equals_the_in_memory_build(tmp_path, suffix):
    groups = GROUPS if suffix in (".jsonl", ".parquet", "stream") else None
    if suffix == ".txt":
        (tmp_path / "c.txt").write_text("\n".join(CAPTIONS) + "\n\n  \n")
    elif suffix == ".jsonl":
        rows = [{"caption": c, "group": g} for c, g in zip(CAPTIONS, GROUPS)]
        (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"caption": CAPTIONS, "group": GROUPS}), tmp_path / "c.parquet", row_group_size=40)
    source = batches(7) if suffix == "stream" else tmp_path / f"c{suffix}"
    build_datastore(source, EMBEDDER, tmp_path / "store", batch_size=7, progress=False)
    on_disk = Datastore.load(tmp_path / "store", EMBEDDER)
    in_memory = Datastore.build(CAPTIONS, EMBEDDER, groups)
    assert list(on_disk.captions) == CAPTIONS and list(on_disk.groups) == in_memory.groups
    assert on_disk.max_group_size == in_memory.max_group_size
    for k in (1, 4, 30):
        assert on_disk.search(QUERIES, k) == in_memory.search(QUERIES, k)
    exclude = ["star", "ring", None, "cross", "circle"]
    assert on_disk.search(QUERIES, 4, exclude) == in_memory.search(QUERIES, 4, exclude)


def test_ivf_shards_merge_on_disk_in_order(tmp_path, monkeypatch):
    """IVF-flat searching every list is exact: equal to flat, with the keys split over several shards."""
    monkeypatch.setattr(index_module, "SHARD_ROWS", 64)
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 16)
    meta = build_datastore(batches(50), EMBEDDER, tmp_path / "ivf", index="ivfflat", progress=False)
    nlist = int(meta["index"].split(",")[0][3:])
    assert nlist > 1 and not list((tmp_path / "ivf").glob("*.tmp"))  # the shards are merged and removed
    every_list = Datastore.load(tmp_path / "ivf", EMBEDDER, nprobe=nlist)
    exact = Datastore.build(CAPTIONS, EMBEDDER, GROUPS)
    assert every_list.search(QUERIES, 4) == exact.search(QUERIES, 4)
    assert every_list.search(QUERIES, 4, ["star"] * 5) == exact.search(QUERIES, 4, ["star"] * 5)
    # IVF-PQ is approximate, and with 240 keys its codes are 2-bit: a caption's own key finds it far more often than
    # a mix-up of ids would (1 in 240).
    build_datastore(batches(50), EMBEDDER, tmp_path / "pq", index="ivfpq", keep_vectors=True, progress=False)
    pq = Datastore.load(tmp_path / "pq", EMBEDDER, nprobe=nlist)
    keys = np.fromfile(tmp_path / "pq" / "vectors.f32", np.float32).reshape(len(CAPTIONS), DIM)
    found = [hits[0] for hits in pq.search(keys[:60], 1)]
    assert np.mean([hit == caption for hit, caption in zip(found, CAPTIONS[:60])]) >= 0.2


def test_on_disk_datastore_saves_by_copy_and_caches_by_its_fingerprint(tmp_path):
    build_datastore(batches(50), EMBEDDER, tmp_path / "a", index="ivfflat", progress=False)
    store = Datastore.load(tmp_path / "a", EMBEDDER)
    store.save(tmp_path / "b")
    copy = Datastore.load(tmp_path / "b", EMBEDDER)
    assert copy.search(QUERIES, 4) == store.search(QUERIES, 4) and copy.fingerprint == store.fingerprint
    # Images "of a colour": the colour is the image's width.
    images, ids = [Image.new("RGB", (1 + COLOURS.index(c), 1)) for c in ("red", "white")], ["red", "white"]
    store.embedder = copy.embedder = Embedder.from_functions(
        word_vectors, lambda images: word_vectors([COLOURS[i.width - 1] for i in images]), EMBEDDER.identity
    )
    cache = tmp_path / "cache.json"
    first = retrieve_cached(store, images, ids, k=2, cache_path=cache)
    assert all(caption.split()[1] == colour for colour, hits in zip(ids, first) for caption in hits)
    assert retrieve_cached(copy, [None, None], ids, k=2, cache_path=cache) == first  # from the cache, not embedded


def test_missing_or_corrupt_files_name_the_file_and_the_fix(tmp_path):
    build_datastore(batches(50), EMBEDDER, tmp_path / "ivf", index="ivfflat", progress=False)
    for name in ("captions.offsets", "index.ivfdata", "index.faiss"):
        broken = tmp_path / f"no-{name}"
        Datastore.load(tmp_path / "ivf").save(broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=rf"{name}'? is missing; copy the whole datastore directory"):
            Datastore.load(broken)
    corrupt = tmp_path / "corrupt"
    Datastore.load(tmp_path / "ivf").save(corrupt)
    (corrupt / "index.faiss").write_bytes((corrupt / "index.faiss").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"index.faiss' cannot be read by FAISS .* rebuild"):
        Datastore.load(corrupt)
    (corrupt / "datastore.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"datastore.json' is not JSON .* rebuild"):
        Datastore.load(corrupt)
    truncated = tmp_path / "truncated"
    Datastore.load(tmp_path / "ivf").save(truncated)
    (truncated / "captions.jsonl").write_bytes((truncated / "captions.jsonl").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"captions.offsets' does not match captions.jsonl .* rebuild"):
        Datastore.load(truncated)
    (tmp_path / "ivf" / "datastore.json").unlink()  # as an interrupted build leaves it
    with pytest.raises(FileNotFoundError, match=r"not a datastore \(no datastore.json\).*running it again"):
        Datastore.load(tmp_path / "ivf")


def test_caption_streams_name_the_bad_line_or_column(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"caption": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl' line 2: .* no string field `caption`"):
        list(caption_batches(tmp_path / "bad.jsonl"))
    (tmp_path / "c.csv").write_text("a\n")
    with pytest.raises(ValueError, match=r"must be a \.txt, \.jsonl, \.parquet file"):
        list(caption_batches(tmp_path / "c.csv"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"no column `caption` \(it has \['text'\]\)"):
        list(caption_batches(tmp_path / "c.parquet"))
    with pytest.raises(ValueError, match=r"--index 'IVF,Nonsense' is not a FAISS index_factory string"):
        build_datastore(batches(50), EMBEDDER, tmp_path / "bad", index="IVF,Nonsense", progress=False)


@pytest.mark.slow  # a fresh interpreter imports torch (seconds)
def test_a_fresh_process_loads_and_queries_the_mapped_index(tmp_path):
    build_datastore(batches(50), EMBEDDER, tmp_path / "store", index="ivfflat", progress=False)
    expected = Datastore.load(tmp_path / "store").search(QUERIES, 4)
    np.save(tmp_path / "queries.npy", QUERIES)
    script = (
        "import json, sys, numpy as np\n"
        "from splice.retrieval import Datastore\n"
        "store = Datastore.load(sys.argv[1])\n"
        "print(json.dumps(store.search(np.load(sys.argv[2]), 4)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "store"), str(tmp_path / "queries.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == expected  # FAISS's on-disk messages go to stderr, stdout stays JSON


def test_cli_builds_the_index_asked_for_and_queries_it_with_nprobe(clip_dir, tmp_path, capsys):
    from splice.cli import main

    rows = [{"caption": c, "group": g} for c, g in zip(CAPTIONS, GROUPS)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    build = ["datastore", "build", "--captions", str(tmp_path / "c.jsonl"), "--embedder", str(clip_dir)]
    main([*build, "--output", str(tmp_path / "ivf"), "--index", "ivfflat", "--keep-vectors"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["index"].startswith("IVF") and summary["count"] == len(CAPTIONS)
    assert (tmp_path / "ivf" / "vectors.f32").stat().st_size == len(CAPTIONS) * summary["dim"] * 4
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    main(["datastore", "query", str(tmp_path / "ivf"), str(tmp_path / "red.png"), "--k", "3", "--nprobe", "64"])
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    exact = Datastore.build(CAPTIONS, Embedder.from_pretrained(str(clip_dir), device="cpu"))
    assert line["captions"] == exact.retrieve_for_images([tmp_path / "red.png"], 3)[0]  # every list searched: exact
    with pytest.raises(ValueError, match=r"--index ivfpq builds text keys from a caption file"):
        main(
            [
                *build[:3],
                "builtin:shapes",
                *build[4:],
                "--keys",
                "image",
                "--output",
                str(tmp_path / "x"),
                "--index",
                "ivfpq",
            ]
        )
