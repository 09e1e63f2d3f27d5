"""Joining a Ray cluster: the one at `--ray-address`, the one this process already joined, or a local one."""

from __future__ import annotations

import os
from typing import Any

# One intra-op thread per worker process: a worker is one CPU of the cluster (more workers, not more threads).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# A local cluster moves file paths, captions and request bodies through its object store, never images in bulk.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def import_ray() -> Any:
    """`ray`, or a one-line `SystemExit` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise SystemExit("splice: ray is not installed; pip install 'splice[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    r"""
    Join a Ray cluster and return the `ray` module.

    Args:
        address (*optional*): a running cluster (`ray://host:10001`, `host:6379` or `"auto"`); default: the cluster
            this process already joined, else a new local one.
        num_cpus (*optional*): the CPUs of a new local cluster (default: this machine's).
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV}, log_to_driver=False)
        return ray
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        runtime_env={"env_vars": WORKER_ENV},
        log_to_driver=False,
    )
    return ray
