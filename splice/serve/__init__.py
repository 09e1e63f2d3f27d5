"""`splice serve`: an HTTP service over a trained model, with dynamic batching, Prometheus metrics, per-token
cross-attention heatmaps and a page to try it (FastAPI + uvicorn: `pip install "splice[serve]"`).

One concept per module: `backend` (what a model must provide), `loading` (which backend serves a directory: PyTorch
now, other runtimes later), `torch_backend` (the PyTorch one), `batching` (the queue and its worker thread), `images`
(uploads into images), `requests` (request and response bodies), `heatmaps` (attention maps into overlays), `metrics`
(Prometheus), `app` (the routes) and `static/` (the page). The command is `splice.cli.serve`.
"""

from typing import Any

from .backend import Backend, Output, Settings
from .loading import LOADERS, load_backend

__all__ = ["LOADERS", "Backend", "Output", "Settings", "create_app", "load_backend"]


def __getattr__(name: str) -> Any:
    # The app needs FastAPI (the `serve` extra); the backend interface, the loaders and the heatmaps do not.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
