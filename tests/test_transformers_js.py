"""transformers.js (npm `@huggingface/transformers`, in Node) loads `splice export` directories and generates the same
ids as PyTorch splice (issue 20, item 3).

The checkpoints are conftest.py's, written by transformers' own classes: vit-gpt2 (GPT-2 decoder, cache names
`past_key_values.N.key/value`), TrOCR base and small (ViT / DeiT + TrOCRForCausalLM, cache names
`past_key_values.N.{decoder,encoder}.{key,value}`) and bert2bert. Node gets the very pixel values PyTorch gets (a JSON
file), so preprocessing plays no part; greedy ids are compared at batch 1 and 3, also with an EOS reached early. Two
limitations of transformers.js itself are pinned here (README, Export), so that a release that lifts one fails a test:
it has no `encoder-decoder` class (bert2bert is refused), and its `generate` keeps one candidate per step (so
`num_beams > 1` returns the greedy ids). transformers.js is installed once per version with `npm install
--ignore-scripts` (onnxruntime-node ships its CPU binaries; its install script only downloads GPU ones) into
~/.cache/splice-tests/.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import pixel_values

from splice.export import export_onnx, load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TRANSFORMERS_JS = "4.3.2"  # the newest 4.x when written; bump it here (the install is cached per version)
PACKAGE = "@huggingface/transformers"
SCRIPT = Path(__file__).with_name("transformers_js_generate.mjs")
CACHE = Path(os.environ.get("SPLICE_TEST_CACHE", Path.home() / ".cache" / "splice-tests"))
MAX_NEW_TOKENS = 10


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not on PATH: tests/test_transformers_js.py runs transformers.js in Node. Install Node.js "
            "(>= 18) with npm, e.g. `apt-get install nodejs npm`."
        )
    return path


@pytest.fixture(scope="module")
def transformers_js() -> Path:
    """The npm prefix holding `node_modules/@huggingface/transformers` at TRANSFORMERS_JS (installed once, cached)."""
    _require("node")
    target = CACHE / f"transformers-js-{TRANSFORMERS_JS}"
    if (target / "node_modules" / PACKAGE / "package.json").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=CACHE))
    command = [_require("npm"), "install", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", str(staging),
               f"{PACKAGE}@{TRANSFORMERS_JS}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"`{' '.join(command)}` failed ({done.returncode}); npm said:\n{done.stderr[-3000:]}")
    try:
        staging.rename(target)  # atomic: a concurrent run that finished first keeps its copy
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tensor(array: torch.Tensor) -> dict:
    dtype = {torch.float32: "float32", torch.int64: "int64"}[array.dtype]
    return {"dtype": dtype, "dims": list(array.shape), "data": array.flatten().tolist()}


def run_node(
    package_dir: Path, model_dir: Path, auto_class: str, runs: list[dict], **options: str
) -> subprocess.CompletedProcess:
    """The Node script on one export; `runs`: [{"inputs": {name: tensor}, "generate": settings}, ...]; `options`:
    `from_pretrained`'s (`dtype="q8"`: the `*_quantized.onnx` graphs)."""
    request = {
        "package_dir": str(package_dir),
        "model_dir": str(model_dir),
        "auto_class": auto_class,
        "options": options,
        "runs": [{"inputs": {k: _tensor(v) for k, v in run["inputs"].items()}, "generate": run["generate"]}
                 for run in runs],
    }  # fmt: skip
    path = model_dir.parent / f"{model_dir.name}-request.json"
    path.write_text(json.dumps(request))
    return subprocess.run([_require("node"), str(SCRIPT), str(path)], capture_output=True, text=True, timeout=300)


def _until_eos(row: list[int], eos: int) -> list[int]:
    """The ids up to and including the first EOS after the start token. transformers.js keeps generating for rows that
    are done (until every row is), where PyTorch pads them: only the tokens up to EOS are the model's."""
    for position in range(1, len(row)):
        if row[position] == eos:
            return row[: position + 1]
    return row


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    cache: dict = {}

    def build(fixture: str):
        if fixture not in cache:
            source = request.getfixturevalue(fixture)
            out = tmp_path_factory.mktemp("exports") / fixture
            export_onnx(source, out, quantize="int8", progress=None)
            cache[fixture] = load_model(source), out
        return cache[fixture]

    return build


@pytest.mark.parametrize("fixture", ["captioner_dir", "trocr_dir", "trocr_small_dir"])
def test_vision2seq_generates_the_same_ids_as_pytorch(transformers_js, exported, fixture):
    """Greedy at batch 1 and 3, then batch 3 with an EOS the model emits (row 0's 3rd token), so rows finish early."""
    model, out = exported(fixture)
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": 1, "do_sample": False}
    runs = [(pixel_values(model.config.encoder, batch=batch, seed=batch), settings) for batch in (1, 3)]
    with torch.no_grad():
        early_eos = int(model.generate(runs[1][0], **settings)[0, 3])
    runs.append((runs[1][0], settings | {"eos_token_id": early_eos}))
    runs.append((runs[1][0], settings | {"num_beams": 3}))  # transformers.js: no beam search, the greedy ids
    done = run_node(transformers_js, out, "AutoModelForVision2Seq",
                    [{"inputs": {"pixel_values": pixels}, "generate": kwargs} for pixels, kwargs in runs])  # fmt: skip
    assert done.returncode == 0, f"transformers.js could not run {out}:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == TRANSFORMERS_JS and result["class"] == "VisionEncoderDecoderModel"
    for (pixels, kwargs), got in zip(runs, result["ids"]):
        with torch.no_grad():
            expected = model.generate(pixels, **(kwargs | {"num_beams": 1})).tolist()
        eos = kwargs.get("eos_token_id", model.generation_config.eos_token_id)
        assert len(got) == len(expected) and max(map(len, expected)) > 4  # tokens were generated
        assert [_until_eos(row, eos) for row in got] == [_until_eos(row, eos) for row in expected], kwargs
        if not any(eos in row[1:] for row in expected):  # no row finished early: the whole arrays agree
            np.testing.assert_array_equal(np.array(got), np.array(expected))
    assert len(_until_eos(result["ids"][2][0], early_eos)) == 4  # the EOS run did stop row 0 at its 3rd token


def test_int8_graphs_load_as_q8(transformers_js, exported):
    """`--quantize int8` writes `onnx/*_quantized.onnx`, transformers.js's file names for `dtype: "q8"`: the same ids
    as splice_onnx on those graphs."""
    from splice_onnx import OnnxSeq2Seq

    model, out = exported("captioner_dir")
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": 1, "do_sample": False}
    pixels = pixel_values(model.config.encoder, batch=3, seed=4)
    done = run_node(transformers_js, out, "AutoModelForVision2Seq",
                    [{"inputs": {"pixel_values": pixels}, "generate": settings}], dtype="q8")  # fmt: skip
    assert done.returncode == 0, f"transformers.js could not run {out} with dtype q8:\n{done.stderr[-3000:]}"
    got = json.loads(done.stdout.strip().splitlines()[-1])["ids"][0]
    expected = OnnxSeq2Seq.from_pretrained(out, quantized=True).generate({"pixel_values": pixels.numpy()}, **settings)
    np.testing.assert_array_equal(np.array(got), expected)


def test_bert2bert_is_refused_by_transformers_js(transformers_js, exported):
    """transformers.js has no `encoder-decoder` (EncoderDecoderModel) class: no Auto class loads bert2bert, whatever
    the graphs (README, Export). This fails once a release adds it; then compare its ids as above."""
    _, out = exported("bert2bert_dir")
    ids = torch.tensor([[5, 9, 14, 7, 21, 3]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    done = run_node(transformers_js, out, "AutoModelForSeq2SeqLM", [{"inputs": inputs, "generate": {}}])
    assert done.returncode != 0 and "Unsupported model type: encoder-decoder" in done.stderr, done.stderr[-3000:]
