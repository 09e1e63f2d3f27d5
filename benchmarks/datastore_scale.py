"""A datastore of N captions: FAISS flat (exact) vs the `auto` choice (IVF-SQ8 on disk) vs LanceDB, on one stream.

    python benchmarks/datastore_scale.py --n 1000000                          # FAISS rows only
    python benchmarks/datastore_scale.py --n 1000000 --lancedb-site DIR       # plus LanceDB (pip install --target DIR)

The stream: N generated caption strings with synthetic keys (no encoder: this measures the index), unit vectors of
`--dim` (default 384, MiniLM's width), drawn chunk by chunk from seeded generators so the stream is never in memory:

- `random`: i.i.d. Gaussian directions, the worst case for any inverted file (no structure to cluster).
- `clustered`: a Gaussian mixture, 1024 unit centres plus noise of norm ~0.75 (within a cluster cosine ~0.6), closer
  to real caption embeddings.

Each build and each query run is a fresh subprocess, so its peak RSS (`ru_maxrss`) is its own. A FAISS build goes
through `splice.retrieval.write_datastore` (captions and keys streamed to disk, index trained on a sample and filled in
chunks, IVF lists merged on disk); a LanceDB build writes the same stream as Arrow record batches to a table and
creates its IVF-SQ index with the same lists and 8-bit codes (`num_partitions` = FAISS's `nlist`, dot product),
searched with the same `nprobes`. FAISS runs one OpenMP thread (`OMP_NUM_THREADS=1`: the machine is shared); LanceDB
its own thread pool. Queries: 1000 fresh draws from the same distribution; recall@4 is
|found ∩ exact| / 4 against the flat index's top 4; latency is `Datastore.search(k=4)` (ids + caption lookup) or
LanceDB's `search().limit(4)` (ids + caption column), batch 1 (median of 100) and batch 32 (median of 10 batches).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from splice.retrieval.index import FLAT_LIMIT

CHUNK = 65_536
QUERIES = 1000
QUERY_START = 1 << 41  # the queries' generator: a start no chunk of keys has (same mixture, other draws)
CENTRES = 1024
NOISE = 0.75
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink"]
SHAPES = ["circle", "square", "star", "triangle", "cross", "ring"]


def vectors(data: str, start: int, stop: int, dim: int, seed: int) -> np.ndarray:
    """Keys `start:stop` (`start` a multiple of CHUNK, or QUERY_START): unit rows `[stop - start, dim]`."""
    rng = np.random.default_rng([seed, start])
    if data == "random":
        x = rng.standard_normal((stop - start, dim), dtype=np.float32)
    else:
        centres = np.random.default_rng([seed, 1 << 40]).standard_normal((CENTRES, dim), dtype=np.float32)  # [C, D]
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (NOISE / np.sqrt(dim))
        x = centres[rng.integers(0, CENTRES, stop - start)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def captions(start: int, stop: int) -> list[str]:
    return [
        f"synthetic caption {i}: a {COLOURS[i % 7]} {SHAPES[i // 7 % 6]} on a plain background"
        for i in range(start, stop)
    ]


def stream(args: argparse.Namespace):
    for start in range(0, args.n, CHUNK):
        stop = min(args.n, start + CHUNK)
        yield captions(start, stop), [None] * (stop - start), vectors(args.data, start, stop, args.dim, args.seed)


def queries(args: argparse.Namespace) -> np.ndarray:
    return vectors(args.data, QUERY_START, QUERY_START + QUERIES, args.dim, args.seed)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(folder: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and (names is None or p.name in names))


def latencies(search, q: np.ndarray) -> dict[str, float]:
    """Median ms of `search` on batch 1 (100 queries) and batch 32 (10 batches), after 3 warm-up calls."""
    for i in range(3):
        search(q[i : i + 1])
    one = []
    for i in range(100):
        t = time.perf_counter()
        search(q[i : i + 1])
        one.append(time.perf_counter() - t)
    many = []
    for i in range(10):
        t = time.perf_counter()
        search(q[i * 32 : (i + 1) * 32])
        many.append(time.perf_counter() - t)
    return {"ms_batch1": 1000 * float(np.median(one)), "ms_batch32": 1000 * float(np.median(many))}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


# -- phases (each in its own process) ----------------------------------------------------------------------------------


def faiss_build(args: argparse.Namespace) -> dict:
    from splice.retrieval import write_datastore

    start = time.perf_counter()
    meta = write_datastore(
        stream(args), {"name_or_path": f"synthetic-{args.data}"}, args.dir, args.kind, False, args.flat_limit, False
    )
    seconds = time.perf_counter() - start
    index_bytes = folder_bytes(Path(args.dir), ("index.faiss", "index.ivfdata"))
    captions_bytes = folder_bytes(Path(args.dir), ("captions.jsonl", "captions.offsets"))
    return {"index": meta["index"], "nprobe": meta["nprobe"], "build_s": seconds, "build_peak_rss_mib": peak_rss_mib(),
            "index_bytes": index_bytes, "captions_bytes": captions_bytes}  # fmt: skip


def faiss_query(args: argparse.Namespace) -> dict:
    from splice.retrieval import Datastore

    q = queries(args)
    store = Datastore.load(args.dir, nprobe=args.nprobe)
    loaded = rss_mib()
    found = np.concatenate([store.index.search(q[i : i + 100], 4)[1] for i in range(0, QUERIES, 100)])  # [Q, 4]
    if args.kind == "flat":
        np.save(Path(args.out) / f"exact-{args.data}.npy", found)
    result = latencies(lambda batch: store.search(batch, 4), q)
    exact = np.load(Path(args.out) / f"exact-{args.data}.npy")
    return result | {
        "recall@4": recall(found, exact),
        "rss_after_load_mib": loaded,
        "query_peak_rss_mib": peak_rss_mib(),
    }


def lance_build(args: argparse.Namespace) -> dict:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfSq

    schema = pa.schema([("id", pa.int64()), ("caption", pa.string()), ("vector", pa.list_(pa.float32(), args.dim))])

    def batches():
        for start, (texts, _, keys) in zip(range(0, args.n, CHUNK), stream(args)):
            ids = pa.array(np.arange(start, start + len(texts)))
            vector = pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel()), args.dim)
            yield pa.RecordBatch.from_arrays([ids, pa.array(texts), vector], schema=schema)

    start = time.perf_counter()
    table = lancedb.connect(args.dir).create_table("captions", data=batches(), schema=schema)
    config = IvfSq(distance_type="dot", num_partitions=args.nlist)
    table.create_index("vector", config=config)
    seconds = time.perf_counter() - start
    return {"index": f"IVF_SQ, {args.nlist} lists", "nprobe": args.nprobe,
            "build_s": seconds, "build_peak_rss_mib": peak_rss_mib(), "index_bytes": folder_bytes(Path(args.dir)),
            "captions_bytes": None}  # fmt: skip


def lance_query(args: argparse.Namespace) -> dict:
    import lancedb

    q = queries(args)
    table = lancedb.connect(args.dir).open_table("captions")
    loaded = rss_mib()

    def search(batch: np.ndarray):
        query = table.search(batch if len(batch) > 1 else batch[0]).limit(4).nprobes(args.nprobe)
        return query.select(["id", "caption"]).to_arrow()

    found = []
    for i in range(QUERIES):
        found.append(search(q[i : i + 1]).column("id").to_pylist())
    exact = np.load(Path(args.out) / f"exact-{args.data}.npy")
    result = latencies(search, q)
    return result | {
        "recall@4": recall(found, exact),
        "rss_after_load_mib": loaded,
        "query_peak_rss_mib": peak_rss_mib(),
    }


PHASES = {
    "faiss-build": faiss_build,
    "faiss-query": faiss_query,
    "lance-build": lance_build,
    "lance-query": lance_query,
}


# -- driver -----------------------------------------------------------------------------------------------------------


def run_phase(args: argparse.Namespace, phase: str, data: str, kind: str, folder: Path, **extra) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--n", str(args.n), "--dim", str(args.dim), "--data", data,
               "--kind", kind, "--dir", str(folder), "--out", str(args.out), "--seed", str(args.seed),
               "--flat-limit", str(args.flat_limit)]  # fmt: skip
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    if phase.startswith("lance"):
        command += ["--lancedb-site", args.lancedb_site]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"{phase} {data} {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def drive(args: argparse.Namespace) -> None:
    from splice.retrieval.index import choose_index, default_nprobe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.data.split(","):
        for kind in ("flat", "auto"):
            folder = out / f"{data}-{kind}"
            shutil.rmtree(folder, ignore_errors=True)
            built = run_phase(args, "faiss-build", data, kind, folder)
            rows.append(
                {"data": data, "engine": "faiss", "kind": kind}
                | built
                | run_phase(args, "faiss-query", data, kind, folder)
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            if kind == "auto" and built["nprobe"]:
                for nprobe in (built["nprobe"] // 4, built["nprobe"] * 4):
                    query = run_phase(args, "faiss-query", data, kind, folder, nprobe=nprobe)
                    rows.append({"data": data, "engine": "faiss", "kind": kind} | built | query | {"nprobe": nprobe})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(folder)
        if args.lancedb_site:
            folder = out / f"{data}-lancedb"
            shutil.rmtree(folder, ignore_errors=True)
            # The lists and nprobe of FAISS's IVF-SQ8 for this many keys (auto's choice above the flat limit).
            factory = choose_index(args.n, args.dim, "ivfsq")
            nlist, nprobe = int(factory.split(",")[0][3:]), args.lance_nprobe or default_nprobe(factory)
            built = run_phase(args, "lance-build", data, "lancedb", folder, nprobe=nprobe, nlist=nlist)
            query = run_phase(args, "lance-query", data, "lancedb", folder, nprobe=nprobe)
            rows.append({"data": data, "engine": "lancedb", "kind": "IVF_SQ"} | built | query)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(folder)
    (out / "datastore_scale.json").write_text(
        json.dumps({"n": args.n, "dim": args.dim, "load": os.getloadavg(), "rows": rows}, indent=2)
    )
    print(f"n={args.n:,} dim={args.dim}, load average at the end {os.getloadavg()[0]:.1f}\n")
    columns = ["keys", "engine", "index", "nprobe", "build s", "build peak RSS MiB", "index MiB",
               "query RSS MiB (loaded / peak)", "ms batch 1", "ms batch 32", "recall@4"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "| --- " * len(columns) + "|")
    for r in rows:
        cells = [r["data"], r["engine"], r["index"], r["nprobe"] or "-", f"{r['build_s']:.1f}",
                 f"{r['build_peak_rss_mib']:.0f}", f"{r['index_bytes'] / 2**20:.0f}",
                 f"{r['rss_after_load_mib']:.0f} / {r['query_peak_rss_mib']:.0f}", f"{r['ms_batch1']:.2f}",
                 f"{r['ms_batch32']:.1f}", f"{r['recall@4']:.3f}"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="captions in the stream")
    parser.add_argument("--dim", type=int, default=384, help="dimension of the synthetic keys")
    parser.add_argument("--data", default="random,clustered", help="random, clustered or both (comma-separated)")
    parser.add_argument("--out", default="/tmp/datastore_scale", help="scratch folder (datastores deleted after use)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat-limit", type=int, default=FLAT_LIMIT, help="the most keys `auto` keeps exact")
    parser.add_argument("--lancedb-site", default="", help="a folder with lancedb installed (pip install --target)")
    parser.add_argument("--lance-nprobe", type=int, default=0, help="LanceDB nprobes (default: FAISS's nprobe)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    for name in ("kind", "dir", "nprobe", "nlist"):
        parser.add_argument(
            f"--{name}", default=None, type=int if name in ("nprobe", "nlist") else str, help=argparse.SUPPRESS
        )
    args = parser.parse_args()
    if args.phase is None:
        drive(args)
        return
    if args.lancedb_site:
        sys.path.append(args.lancedb_site)  # after this environment's packages, which win
    print(json.dumps(PHASES[args.phase](args)))


if __name__ == "__main__":
    main()
