"""`splice serve --replicas 2` on Ray Serve, one local 2-CPU cluster for the module (slow): the same API and the same
answers as the single-process app (captions, several images, errors, /health), and concurrent requests over both
replicas get their single-request answers; `splice serve --replicas` as a real process answers too."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from ray import serve
from serve_tiny import image, png, save_captioner

from splice.scale.serving import DEPLOYMENT, serve_application
from splice.serve import create_app, load_backend

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_captioner(tmp_path_factory.mktemp("captioner"))


@pytest.fixture(scope="module")
def replicas(model_dir, ray_cluster):
    """Two replicas (half a CPU each) behind Ray Serve's proxy on a free loopback port; yields the base URL."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = serve_application(str(model_dir), replicas=2, cpus_per_replica=0.5, max_wait_ms=20)
    serve.run(app, name=DEPLOYMENT, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def single_process(model_dir, requests):
    """The answers of the single-process app (`create_app`, in process) to `requests` [(method, path, kwargs)]."""
    app = create_app(load_backend(model_dir), max_wait_ms=20)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
                return [await client.request(method, path, **kwargs) for method, path, kwargs in requests]

    return asyncio.run(main())


def test_same_answers_as_the_single_process_server(replicas, model_dir):
    pictures = [image(seed) for seed in range(6)]
    requests = [("POST", "/v1/caption", {"files": {"image": png(p)}}) for p in pictures]
    requests.append(("POST", "/v1/caption", {"files": [("image", png(p)) for p in pictures[:3]]}))  # several
    requests.append(("POST", "/v1/caption", {"files": {"image": b"not an image"}}))  # 400, the same message
    requests.append(("POST", "/v1/caption", {"json": {"image": "e30=", "max_new_tokens": 10_000}}))  # 422
    requests.append(("POST", "/v1/generate", {"json": {"text": "a red circle"}}))  # 400: a captioner
    alone = single_process(model_dir, requests)
    with httpx.Client(base_url=replicas, timeout=120) as client:
        served = [client.request(method, path, **kwargs) for method, path, kwargs in requests]
        health = client.get("/health").json()
    assert [r.status_code for r in served] == [r.status_code for r in alone] == [200] * 7 + [400, 422, 400]
    assert [r.json() for r in served] == [r.json() for r in alone]
    assert health["model"] == alone[0].json()["model"] and health["task"] == "caption"


def test_concurrent_requests_over_two_replicas_get_single_request_answers(replicas, model_dir):
    pictures = [image(100 + seed) for seed in range(16)]
    alone = single_process(model_dir, [("POST", "/v1/caption", {"files": {"image": png(p)}}) for p in pictures])

    async def load():
        async with httpx.AsyncClient(base_url=replicas, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/caption", files={"image": png(p)}) for p in pictures))

    served = asyncio.run(load())
    assert [r.json() for r in served] == [r.json() for r in alone]
    assert serve.status().applications[DEPLOYMENT].deployments[DEPLOYMENT].replica_states == {"RUNNING": 2}


def test_the_command_serves_replicas(model_dir):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RAY_ADDRESS="")
    command = [sys.executable, "-m", "splice.cli", "serve", str(model_dir), "--replicas", "1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []  # read as they come: the ready line is printed once `serve.run` returns
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("(Ray Serve)" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the replicas did not start in 180 s:\n" + "".join(lines)
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/caption", files={"image": png(image(1))}, timeout=120)
        assert answer.status_code == 200 and answer.json()["model"] == model_dir.name
    finally:
        process.terminate()
        process.wait(timeout=120)
        reader.join(timeout=10)
    assert any("1 replica(s)" in line for line in lines), "".join(lines)
