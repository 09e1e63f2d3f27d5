"""`splice serve MODEL_DIR --replicas N`: the `splice serve` app (`create_app`) as a Ray Serve deployment.

Each replica loads the backend once (`load_backend`) and serves the very same FastAPI app as the single-process server
(`@serve.ingress`, the app built on the replica by `__serve_build_asgi_app__`), so the API, its errors and its answers
are the same; each replica batches its own requests with the app's dynamic batcher (`max_batch_size`,
`max_wait_ms`). Ray Serve's HTTP proxy spreads requests over the replicas and restarts a replica that dies.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from .cluster import connect

DEPLOYMENT = "splice"


def serve_application(
    model_dir: str,
    replicas: int = 1,
    device: str = "cpu",
    datastore: str | None = None,
    torch_options: dict[str, Any] | None = None,
    cpus_per_replica: float = 1.0,
    max_ongoing_requests: int = 64,
    **app_options: Any,
) -> Any:
    r"""
    The Ray Serve application (`serve.run` it) of `replicas` copies of `splice serve`'s app over `model_dir`.

    Args:
        model_dir: a directory saved by `splice train` (model and processor).
        replicas: the copies, each holding one model.
        device: `"cpu"` or `"cuda"` (a replica then asks Ray for one GPU).
        datastore (*optional*): SmallCap: retrieve prompts from this datastore directory.
        torch_options (*optional*): `load_backend`'s `dtype`, `quantize` and `compile`, for every replica.
        cpus_per_replica: the CPUs Ray reserves for each replica (and its intra-op threads, at least one).
        max_ongoing_requests: requests one replica holds at once (the rest wait in the proxy).
        app_options: `create_app`'s keywords (`max_batch_size`, `max_wait_ms`, `max_queue`, `max_upload_bytes`).
    """
    from ray import serve

    actor_options: dict[str, Any] = {"num_cpus": cpus_per_replica}
    if device == "cuda":
        actor_options["num_gpus"] = 1
    threads = max(1, int(cpus_per_replica))

    @serve.deployment(
        name=DEPLOYMENT,
        num_replicas=replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=max_ongoing_requests,
    )
    @serve.ingress()
    class SpliceReplica:
        def __init__(self) -> None:
            import torch

            from ..serve import load_backend

            torch.set_num_threads(threads)
            self.backend = load_backend(model_dir, device, datastore, **(torch_options or {}))

        def __serve_build_asgi_app__(self) -> Any:
            from ..serve import create_app

            return create_app(self.backend, **app_options)

    return SpliceReplica.bind()


def run_replicas(
    model_dir: str,
    replicas: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    **options: Any,
) -> None:
    r"""
    Serve `model_dir` with `replicas` replicas on Ray Serve at `http://host:port/` until SIGINT / SIGTERM.

    Args:
        address (*optional*): a running Ray cluster; default: a new local one.
        options: `serve_application`'s keywords.
    """
    connect(address)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(serve_application(model_dir, replicas, **options), name=DEPLOYMENT, route_prefix="/")
    print(f"splice serve: {replicas} replica(s) of {model_dir} at http://{host}:{port}/ (Ray Serve)", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # each replica answers its requests in flight before it stops
