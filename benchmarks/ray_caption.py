"""Throughput of `splice caption --ray` with 1 vs 2 workers (Ray Data actor pool) on a local cluster, and whether the
captions equal single-process `splice caption` (`--format jsonl`) row for row. MODEL_DIR: a PyTorch model directory or
a `splice export` directory (onnxruntime); the single-process captions must come from the same MODEL_DIR. Each row
ends with the 1-minute load average after it (the throughput means little on a machine busy with other work).

    python benchmarks/ray_caption.py MODEL_DIR IMAGES_DIR SINGLE_PROCESS.jsonl [--workers 1 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import ray

from splice.scale.captioning import caption_on_ray, read_output
from splice.scale.cluster import WORKER_ENV


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("single", help="the single-process captions (splice caption --format jsonl --output)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    single = {r["file"]: r["caption"] for r in map(json.loads, Path(args.single).read_text().splitlines())}
    files = sorted(str(p) for p in Path(args.images).iterdir())
    ray.init(num_cpus=args.cpus, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV})  # fmt: skip
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| workers | images | seconds | images/s | equal to single process | load average |")
    print("|---|---|---|---|---|---|")
    for workers in args.workers:
        folder = Path(tempfile.mkdtemp()) / "captions.parquet"
        summary = caption_on_ray(files, args.model, folder, workers=workers, batch_size=args.batch_size)
        rows = {r["file"]: r["caption"] for r in read_output(folder) if r["caption"] is not None}
        equal = f"{sum(rows.get(f) == c for f, c in single.items())}/{len(single)}"
        rate, load = summary.captioned / summary.seconds, os.getloadavg()[0]
        cells = [workers, summary.captioned, f"{summary.seconds:.1f}", f"{rate:.2f}", equal, f"{load:.1f}"]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)
        shutil.rmtree(folder.parent)
    ray.shutdown()


if __name__ == "__main__":
    main()
