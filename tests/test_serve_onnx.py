"""`splice serve` over a `splice export` directory: the onnxruntime backend is chosen by the manifest, answers exactly
as the PyTorch backend on the same weights (captions, tokens, beams, text generation), refuses heatmaps with a 400
naming the PyTorch model, and serves with torch and transformers blocked."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_tiny import image, png, save_captioner, save_text_model

from splice.export import export_onnx
from splice.serve import Settings, create_app, load_backend
from splice.serve.onnx_backend import OnnxBackend
from splice.serve.torch_backend import TorchBackend

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
PICTURES = [image(1), image(2, (70, 20)), image(3, (15, 60)), image(4), image(5, (30, 30))]
TEXTS = ["a red circle", "two blue big squares on the left", "star", "green square on the top right"]


def _pair(directory: Path) -> tuple[Path, Path]:
    export = directory.parent / f"{directory.name}-onnx"
    export_onnx(directory, export, check=False, progress=None)  # compared here, through the API
    return directory, export


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return _pair(save_captioner(tmp_path_factory.mktemp("captioner")))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return _pair(save_text_model(tmp_path_factory.mktemp("text")))


def _files(pictures):
    return [("image", (f"{i}.png", png(picture), "image/png")) for i, picture in enumerate(pictures)]


@functools.cache
def _backend(directory: Path):
    return load_backend(directory)


def _answers(directory: Path, requests: list[tuple[str, dict]]) -> list[tuple[int, dict]]:
    with TestClient(create_app(_backend(directory), max_wait_ms=20)) as client:
        answers = []
        for path, kwargs in requests:
            response = client.post(path, **kwargs)
            answers.append((response.status_code, response.json()))
        return answers


def _without_model(answers):
    """The answers with the model name (the directory's) left out, at both levels of a several-image answer."""

    def strip(body):
        body = {k: v for k, v in body.items() if k != "model"}
        if "captions" in body:
            body["captions"] = [strip(caption) for caption in body["captions"]]
        return body

    return [(status, strip(body)) for status, body in answers]


def test_the_manifest_picks_onnxruntime(captioner, text_model):
    assert isinstance(_backend(captioner[1]), OnnxBackend)
    assert isinstance(_backend(captioner[0]), TorchBackend)
    backend = _backend(text_model[1])
    assert backend.task == "generate" and backend.max_new_tokens == _backend(text_model[0]).max_new_tokens


def test_pytorch_options_on_an_export_name_themselves(captioner):
    with pytest.raises(ValueError, match="compile, dtype: options of the PyTorch backend.*is an export"):
        load_backend(captioner[1], dtype="bf16", compile=True)


def test_captions_equal_pytorch(captioner):
    requests = [
        ("/v1/caption", {"files": _files(PICTURES)}),  # several images, one batch, mixed sizes
        ("/v1/caption", {"files": _files(PICTURES[:1]), "data": {"max_new_tokens": "7"}}),
        ("/v1/caption", {"files": _files(PICTURES[1:4]), "data": {"num_beams": "3", "max_new_tokens": "9"}}),
    ]
    torch_answers, onnx_answers = (_answers(directory, requests) for directory in captioner)
    assert all(status == 200 for status, _ in onnx_answers)
    assert _without_model(onnx_answers) == _without_model(torch_answers)
    assert onnx_answers[0][1]["model"] == captioner[1].name
    assert any(caption["caption"] for caption in onnx_answers[0][1]["captions"])  # not all empty


def test_beams_equal_pytorch_without_scores(captioner):
    requests = [("/v1/caption", {"files": _files(PICTURES[1:3]), "data": {"num_beams": "3", "max_new_tokens": "6",
                                                                          "return_beams": "true"}})]  # fmt: skip
    (_, torch_body), (status, onnx_body) = (_answers(directory, requests)[0] for directory in captioner)
    assert status == 200
    for ours, theirs in zip(onnx_body["captions"], torch_body["captions"]):
        assert ours["beams"] == [{"caption": beam["caption"]} for beam in theirs["beams"]]  # the runtime gives no score
        assert len(ours["beams"]) == 3 and ours["beams"][0]["caption"] == ours["caption"] == theirs["caption"]


def test_text_generation_equals_pytorch(text_model):
    requests = [
        ("/v1/generate", {"json": {"text": TEXTS}}),
        ("/v1/generate", {"json": {"text": TEXTS[1], "num_beams": 2, "max_new_tokens": 6}}),
    ]
    torch_answers, onnx_answers = (_answers(directory, requests) for directory in text_model)
    assert all(status == 200 for status, _ in onnx_answers)
    assert _without_model(onnx_answers) == _without_model(torch_answers)


def test_heatmaps_are_a_clear_400(captioner):
    with TestClient(create_app(_backend(captioner[1]))) as client:
        response = client.post("/v1/caption", files=_files(PICTURES[:1]), data={"heatmap": "true"})
        health = client.get("/health").json()
    assert response.status_code == 400
    assert "PyTorch model" in response.json()["detail"] and "ONNX export" in response.json()["detail"]
    assert health["heatmaps"] is False and health["task"] == "caption"


def test_bad_options_name_the_fix(captioner):
    with pytest.raises(ValueError, match=r"--datastore 'x'.*not retrieval-augmented"):
        OnnxBackend.from_directory(captioner[1], datastore="x")
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            raise ValueError("CUDAExecutionProvider present: nothing to refuse here")
        OnnxBackend.from_directory(captioner[1], device="cuda")


@pytest.mark.slow
def test_serves_without_torch(captioner, tmp_path):
    """A subprocess where `import torch` and `import transformers` fail serves the export and gives the same
    captions. `splice/__init__.py` imports the PyTorch models, so the subprocess loads `splice.serve` without
    running it (an empty `splice` package object): what is checked is that the serving path itself needs no torch."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("torch", "transformers"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    picture = tmp_path / "0.png"
    PICTURES[0].save(picture)
    script = f"""
import json, sys, types
package = types.ModuleType("splice"); package.__path__ = [{str(ROOT / "splice")!r}]; sys.modules["splice"] = package
from fastapi.testclient import TestClient
from splice.serve.app import create_app
from splice.serve.loading import load_backend
with TestClient(create_app(load_backend({str(captioner[1])!r}))) as client:
    with open({str(picture)!r}, "rb") as file:
        response = client.post("/v1/caption", files={{"image": ("0.png", file.read(), "image/png")}})
assert not {{"torch", "transformers"}} & set(sys.modules), sorted(sys.modules)
print(json.dumps(response.json()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = _backend(captioner[0]).run([PICTURES[0]], Settings())[0]
    assert (got["caption"], got["tokens"]) == (expected.text, expected.tokens)


@pytest.mark.slow
def test_smallcap_export_serves_retrieval_prompts(tmp_path):
    """An exported SmallCap answers as the PyTorch backend: prompts retrieved from the datastore `splice export` copied
    (keys from the captioner's own encoder, searched without torch), left out of the caption and its tokens; with
    the datastore removed, both use the no-retrieval prompt."""
    import transformers as T
    from tiny import randomize

    import splice
    from splice.data.builtin import train_tokenizer
    from splice.models.smallcap import NO_RETRIEVAL_PROMPT, SmallCapConfig, SmallCapModel, build_prompt
    from splice.retrieval import Datastore, frozen_encoder_embedder

    captions = ["a red circle on the left", "a blue square", "two green stars at the top", "a star", "a blue square"]
    tokenizer = train_tokenizer(captions + [NO_RETRIEVAL_PROMPT, build_prompt(captions)])
    vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                image_size=32, patch_size=8)  # fmt: skip
    decoder = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=len(tokenizer),
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    config = SmallCapConfig.from_encoder_decoder_configs(vision, decoder, retrieval_k=2)
    model = randomize(SmallCapModel(config), seed=1).eval()
    source = tmp_path / "smallcap"
    model.save_pretrained(source)
    processor = splice.SpliceProcessor(T.ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(source)
    embedder = frozen_encoder_embedder(model.encoder, processor.image_processor)
    keys = [image(seed) for seed in range(10, 10 + len(captions))]
    Datastore.build(captions, embedder, key_kind="image", images=keys).save(source / "datastore")
    _, export = _pair(source)
    assert (export / "datastore" / "index.faiss").is_file()
    requests = [("/v1/caption", {"files": _files(PICTURES[:3] + keys[:2]), "data": {"max_new_tokens": "8"}}),
                ("/v1/caption", {"files": _files(PICTURES[3:4]), "data": {"num_beams": "2"}})]  # fmt: skip
    torch_answers, onnx_answers = (_answers(directory, requests) for directory in (source, export))
    assert all(status == 200 for status, _ in onnx_answers)
    assert _without_model(onnx_answers) == _without_model(torch_answers)
    assert any(caption["tokens"] for caption in onnx_answers[0][1]["captions"])
    backend = load_backend(export)
    retrieved = backend.datastore.retrieve(backend.model.encode({"pixel_values": backend.image_processor(keys)}), 2)
    assert [hits[0] for hits in retrieved] == captions  # each key image finds its own caption first

    shutil.rmtree(source / "datastore")
    shutil.rmtree(export / "datastore")
    _backend.cache_clear()
    torch_answers, onnx_answers = (_answers(directory, requests[:1]) for directory in (source, export))
    assert _without_model(onnx_answers) == _without_model(torch_answers)
