"""`splice serve` as a real uvicorn process on 127.0.0.1 (slow): SIGTERM drains the requests in flight, the page works
in headless Chromium (upload with 3 beams, caption, the beams listed, hover a word, the heatmap shows), and the API
survives schemathesis fuzzing from its own OpenAPI schema (no 5xx)."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_tiny import image, png, save_captioner, save_text_model

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(model_dir: Path, *flags: str):
    """`splice serve model_dir` on a free loopback port; yields the process and its base URL."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "splice.cli", "serve", str(model_dir), "--port", str(port), *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start in 120 s"
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    return save_captioner(tmp_path_factory.mktemp("captioner"))


def test_sigterm_drains_requests_in_flight_then_exits(captioner_dir):
    pictures = [image(seed) for seed in range(4)]
    with running(captioner_dir, "--max-wait-ms", "2500") as (process, url):
        alone = [httpx.post(f"{url}/v1/caption", files={"image": png(p)}, timeout=60).json() for p in pictures]
        answers: list = [None] * len(pictures)

        def send(i):
            answers[i] = httpx.post(f"{url}/v1/caption", files={"image": png(pictures[i])}, timeout=60)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(pictures))]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # all four wait in the batcher (2.5 s window)
        assert httpx.get(f"{url}/health").json()["queue_depth"] == 4
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        code = process.wait(60)
        log = process.stdout.read()
    assert [a.status_code for a in answers] == [200] * 4, log
    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has shut down
    assert [a.json() for a in answers] == alone
    assert "Shutting down" in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_page_captions_an_upload_lists_its_beams_and_shows_a_words_heatmap_on_hover(captioner_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    upload = tmp_path / "upload.png"
    screenshot = Path(os.environ.get("SPLICE_SERVE_SCREENSHOT", tmp_path / "serve.png"))
    with running(captioner_dir) as (_, url), sync_playwright() as playwright:
        for seed in range(50):  # an image whose caption has a few words (a random model may stop at once)
            image(seed, (180, 240)).save(upload)
            fields = {"num_beams": "3", "return_beams": "true"}
            answer = httpx.post(f"{url}/v1/caption", files={"image": upload.read_bytes()}, data=fields, timeout=60)
            expected = answer.json()
            if 3 <= len(expected["tokens"]) <= 12 and all(beam["caption"] for beam in expected["beams"]):
                break
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('on cpu')")
            page.fill("#beams-input", "3")
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#caption .token", timeout=60_000)
            caption = page.get_attribute("#caption", "data-text")
            assert caption == expected["caption"] and page.inner_text("#caption").strip() == caption
            beams = page.locator("#beams li")
            assert [beams.nth(i).get_attribute("data-caption") for i in range(beams.count())] == [
                beam["caption"] for beam in expected["beams"]
            ]  # under the caption, best first, with their scores
            assert f"({expected['beams'][1]['score']:.3f})" in beams.nth(1).inner_text()
            assert not page.is_visible("#overlay")
            words = page.locator("#caption .token")
            words.nth(1).hover()
            page.wait_for_selector("#overlay.shown", state="visible", timeout=10_000)
            assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
            box = page.locator("#overlay").bounding_box()
            assert box["width"] > 100 and box["height"] > 100
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            page.mouse.move(5, 5)
            page.wait_for_selector("#overlay", state="hidden", timeout=10_000)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 1000


def test_schemathesis_finds_no_server_error_in_1000_generated_requests(captioner_dir, tmp_path):
    text_dir = save_text_model(tmp_path / "text")
    generated = 0
    for model_dir in (captioner_dir, text_dir):
        with running(model_dir, "--log-level", "warning") as (_, url):
            result = subprocess.run(
                [str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json", "--checks",
                 "not_a_server_error", "--max-examples", "400", "--seed", "7", "--request-timeout", "30"],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-4000:]
            generated += int(re.search(r"(\d+) generated", result.stdout).group(1))
    print(f"schemathesis: {generated} generated requests, no 5xx")
    assert generated >= 1000
