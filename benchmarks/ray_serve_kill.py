"""Kill one replica's process (`ray.kill`) during a bounded load run on loopback against `splice serve --replicas 2`
(Ray Serve, local cluster): requests sent, answered 200, failed (and what they failed with), failed again after one
client retry, and seconds until Ray Serve reports both replicas RUNNING again.

    python benchmarks/ray_serve_kill.py MODEL_DIR [--requests 300] [--concurrency 8] [--kill-after 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import socket
import time

import httpx
import numpy as np
import ray
from PIL import Image
from ray import serve

from splice.scale.cluster import WORKER_ENV
from splice.scale.serving import DEPLOYMENT, serve_application


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def replica_handles() -> list:
    """The replicas' actors (found by name: the state API needs the dashboard, which this cluster leaves out)."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in named if "SERVE_REPLICA" in a["name"]]


def running() -> int:
    return serve.status().applications[DEPLOYMENT].deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


async def load(url: str, total: int, concurrency: int, kill_after: float) -> dict:
    bodies = [png(seed) for seed in range(total)]
    outcomes: list[str] = [""] * total
    retried: list[str] = [""] * total
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def send(client: httpx.AsyncClient, i: int) -> str:
        try:
            response = await client.post("/v1/caption", files={"image": bodies[i]})
            return str(response.status_code)
        except httpx.TransportError as error:
            return type(error).__name__

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            outcomes[i] = await send(client, i)
            retried[i] = outcomes[i] if outcomes[i] == "200" else await send(client, i)

    killed: dict = {}

    async def killer() -> None:
        await asyncio.sleep(kill_after)
        ray.kill(replica_handles()[0], no_restart=True)  # the replica's worker process is killed at once
        killed["at"] = time.monotonic()
        while running() == 2:  # the controller notices the death
            await asyncio.sleep(0.1)
        while running() < 2:
            await asyncio.sleep(0.1)
        killed["recovered_s"] = time.monotonic() - killed["at"]

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(killer(), *(worker(client) for _ in range(concurrency)))
    return {
        "requests": total,
        "seconds": round(time.monotonic() - started, 1),
        "first try": dict(collections.Counter(outcomes)),
        "after one retry": dict(collections.Counter(retried)),
        "replica back (RUNNING 2) after s": round(killed.get("recovered_s", float("nan")), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kill-after", type=float, default=3.0)
    args = parser.parse_args()
    ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV})  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_application(args.model, replicas=2, cpus_per_replica=0.5), name=DEPLOYMENT, route_prefix="/")
    print(asyncio.run(load(f"http://127.0.0.1:{port}", args.requests, args.concurrency, args.kill_after)))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
