"""Load test of `splice serve` on loopback: N requests at concurrency C against a tiny random captioner, once with
`--max-batch-size 16` and once with `1`, in one run; zero failures and every answer equal to the single-request output
(computed in process, one image at a time) are asserted; throughput and p50/p99 latency are printed as a table.

    python benchmarks/load_serve.py                 # 1,000 requests at concurrency 64, about a minute on 2 CPU cores
    python benchmarks/load_serve.py --requests 200  # quicker

Bounded: loopback only (127.0.0.1), a fixed number of requests, a per-request timeout and a time limit per run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

import splice  # noqa: E402
from splice.data.builtin import train_tokenizer  # noqa: E402
from splice.serve import Settings, load_backend  # noqa: E402

WORDS = "a red blue green circle square star on the left right top bottom two three big small".split()


def build_model(directory: Path) -> Path:
    """A ViT (30 px, 3x3 patches) + GPT-2 captioner, 2 layers each, 32 wide, weights drawn so captions vary."""
    tokenizer = train_tokenizer([" ".join(WORDS)])
    vit = transformers.ViTConfig(image_size=30, patch_size=10, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=37)  # fmt: skip
    gpt2 = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_inner=37,
                                   n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    model = splice.VisionEncoderDecoderModel(splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit, gpt2))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1.5)
    model.save_pretrained(directory)
    image_processor = transformers.ViTImageProcessor(size={"height": 30, "width": 30})
    splice.SpliceProcessor(image_processor, tokenizer).save_pretrained(directory)
    return directory


def images(count: int) -> list[bytes]:
    """`count` random PNGs of random sizes (10 to 120 pixels a side)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        height, width = (int(n) for n in rng.integers(10, 120, 2))
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(model_dir: Path, max_batch_size: int, max_wait_ms: float):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "splice.cli", "serve", str(model_dir), "--port", str(port), "--log-level",
               "warning", "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
               "--max-queue", "1024"]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(60)


def multipart(picture: bytes, max_new_tokens: int) -> tuple[bytes, str]:
    """The multipart body of one caption request and its content type."""
    request = httpx.Request(
        "POST", "http://x/", files={"image": ("image.png", picture, "image/png")},
        data={"max_new_tokens": str(max_new_tokens)},
    )  # fmt: skip
    return request.read(), request.headers["content-type"]


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection: the status and the body (Content-Length framed)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(next(v for k, v in headers.items() if k.lower() == "content-length"))
    return int(lines[0].split()[1]), await reader.readexactly(length)


async def load(url: str, pictures: list[bytes], requests: int, concurrency: int, max_new_tokens: int, limit: float):
    """Send `requests` captions (image i % len) over `concurrency` keep-alive connections; latencies, failures and
    answers by request. The client is raw asyncio streams with the requests encoded beforehand, so that on a small
    machine it leaves the CPU to the server (an httpx client at this concurrency needed more CPU than the server)."""
    host, port = url.removeprefix("http://").split(":")
    encoded = []
    for picture in pictures:
        body, content_type = multipart(picture, max_new_tokens)
        head = (f"POST /v1/caption HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        encoded.append(head.encode() + body)
    latencies: list[float] = []
    answers: dict[int, str] = {}
    failures: list[str] = []
    next_request = iter(range(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in next_request:
                started = time.perf_counter()
                try:
                    status, body = await exchange(reader, writer, encoded[i % len(encoded)])
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    failures.append(f"request {i}: {type(error).__name__}: {error}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                if status != 200:
                    failures.append(f"request {i}: {status} {body[:200]!r}")
                    continue
                answers[i] = json.loads(body)["caption"]
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(concurrency))), limit)
    return time.perf_counter() - started, latencies, answers, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch-sizes", default="16,1", help="the --max-batch-size of each run, in order")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--distinct-images", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per run before it is a failure")
    parser.add_argument("--output", help="also write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pictures = images(args.distinct_images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "tiny-captioner")
        backend = load_backend(model_dir)
        settings = Settings(max_new_tokens=args.max_new_tokens)
        alone = [backend.run([Image.open(io.BytesIO(p)).convert("RGB")], settings)[0].text for p in pictures]
        print(f"{len(set(alone))} distinct captions for {len(pictures)} images", file=sys.stderr)
        for size in (int(s) for s in args.batch_sizes.split(",")):
            with server(model_dir, size, args.max_wait_ms) as url:
                asyncio.run(load(url, pictures, 2 * args.concurrency, args.concurrency, args.max_new_tokens, 120))
                elapsed, latencies, answers, failures = asyncio.run(
                    load(url, pictures, args.requests, args.concurrency, args.max_new_tokens, args.time_limit)
                )
                batches = httpx.get(f"{url}/metrics").text
            wrong = [i for i, text in answers.items() if text != alone[i % len(pictures)]]
            count = float(
                next(line.split()[1] for line in batches.splitlines() if line.startswith("splice_batch_size_count"))
            )
            total = float(
                next(line.split()[1] for line in batches.splitlines() if line.startswith("splice_batch_size_sum"))
            )
            latencies.sort()
            rows.append({
                "max_batch_size": size, "requests": args.requests, "concurrency": args.concurrency,
                "requests_per_s": args.requests / elapsed, "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
                "failures": len(failures), "different_from_single": len(wrong), "mean_batch": total / max(count, 1),
            })  # fmt: skip
            for failure in failures[:5]:
                print(failure, file=sys.stderr)
    print("| --max-batch-size | requests/s | p50 (ms) | p99 (ms) | failures | ≠ single | mean batch |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['max_batch_size']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
              f"{row['failures']} | {row['different_from_single']} | {row['mean_batch']:.1f} |")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    if any(row["failures"] or row["different_from_single"] for row in rows):
        raise SystemExit("FAILED: failures or answers different from the single-request output (see above)")


if __name__ == "__main__":
    main()
