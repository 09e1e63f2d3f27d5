"""`splice serve MODEL_DIR`: an HTTP service over a trained model (FastAPI + uvicorn), with dynamic batching."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `splice serve`."""
    from ._inputs import add_decoding_arguments, at_least_one

    parser.add_argument("model_dir", help="a directory saved by `splice train` (model and processor)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="the TCP port to listen on")
    parser.add_argument("--max-batch-size", type=at_least_one, default=16, help="the most inputs generated together")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long an input waits for a batch")
    parser.add_argument("--max-queue", type=at_least_one, default=256, help="waiting inputs before 503")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="the largest request body (413 above)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--datastore", help="SmallCap: retrieve prompts from this datastore directory")
    add_decoding_arguments(
        parser,
        "decode through a compiled step (static cache + torch.compile; same outputs), compiled at startup; greedy "
        "and sampling requests (beams decode eagerly)",
    )
    parser.add_argument(
        "--timeout-keep-alive", type=float, default=30.0, help="seconds an idle keep-alive connection stays open"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level",
    )
    parser.add_argument(
        "--replicas",
        type=at_least_one,
        default=None,
        help="serve N replicas of the app on Ray Serve (pip install 'splice[ray]'), each its own model and batcher",
    )
    parser.add_argument("--ray-address", help="with --replicas: a running Ray cluster (default: start a local one)")


def check(args: argparse.Namespace) -> None:
    """The flags' checks that need no torch (run before it loads): values in range, the model directory exists."""
    from pathlib import Path

    from ..training.config import ConfigError

    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms={args.max_wait_ms}: must be ≥ 0 (milliseconds an input waits for a batch)")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb={args.max_upload_mb}: must be > 0 (the largest request body, in MB)")
    if not Path(args.model_dir).is_dir():
        raise ConfigError(
            f"MODEL_DIR={args.model_dir!r}: no such directory; pass the output_dir of `splice train` or the OUT_DIR "
            "of `splice export`"
        )


def run(args: argparse.Namespace) -> None:
    """Load the model and serve it until SIGINT / SIGTERM (requests in flight are answered first)."""
    from ..training.config import ConfigError

    check(args)
    if args.replicas:
        return _run_replicas(args)
    try:
        import uvicorn

        from ..serve import create_app, load_backend
    except ModuleNotFoundError as error:
        # fastapi / uvicorn: the command line's optional-package message; another of the extra's packages: this one
        if (error.name or "").split(".")[0] in ("fastapi", "uvicorn"):
            raise
        missing = f"{error.name} is not installed (splice serve needs it)"
        raise ConfigError(f"{missing}; pip install 'splice[serve]'") from None
    try:
        backend = load_backend(args.model_dir, args.device, args.datastore, **_torch_options(args))
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None
    app = create_app(
        backend,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=60,  # SIGTERM: answer the requests in flight (up to a minute), then exit
    )


def _run_replicas(args: argparse.Namespace) -> None:
    """`splice serve --replicas N`: the same app on Ray Serve (`splice.scale.serving`)."""
    from ..scale.serving import run_replicas

    run_replicas(
        args.model_dir,
        args.replicas,
        host=args.host,
        port=args.port,
        address=args.ray_address,
        device=args.device,
        datastore=args.datastore,
        torch_options=_torch_options(args),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )


def _torch_options(args: argparse.Namespace) -> dict:
    """The PyTorch backend's options (`load_backend`): dtype, quantize, compile."""
    return {"dtype": args.dtype, "quantize": args.quantize, "compile": args.compile}
