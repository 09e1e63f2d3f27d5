"""The torch-free runtime on one exported checkpoint (vit-gpt2 as transformers writes it): captions equal PyTorch's,
a subprocess where `import torch` fails captions the same, `splice caption OUT_DIR`, and one clear error per broken
directory (missing file, truncated graph, newer format, unsupported setting)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import random_image

from splice.export import export_onnx, load_model
from splice_onnx import ExportFormatError, OnnxCaptioner

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [random_image(seed) for seed in range(3)] + [random_image(9, size=(30, 64))]


@pytest.fixture(scope="module")
def exported(captioner_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vit-gpt2-onnx")
    export_onnx(captioner_dir, out, check=False, progress=None)
    return out


@pytest.fixture(scope="module")
def model(captioner_dir):
    return load_model(captioner_dir)


def test_layout_is_optimums(exported):
    import onnxruntime as ort

    # the graphs in onnx/, where transformers.js looks (tests/test_transformers_js.py loads them there)
    assert {str(p.relative_to(exported)) for p in exported.rglob("*.onnx")} == {
        "onnx/encoder_model.onnx",
        "onnx/decoder_model_merged.onnx",
    }
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (exported / name).is_file(), name
    decoder = ort.InferenceSession(str(exported / "onnx" / "decoder_model_merged.onnx"))
    inputs = {i.name: i for i in decoder.get_inputs()}
    assert list(inputs)[:2] == ["input_ids", "encoder_hidden_states"]
    assert inputs["use_cache_branch"].type == "tensor(bool)" and inputs["use_cache_branch"].shape == [1]
    assert inputs["past_key_values.0.key"].shape[0] == "batch_size"  # transformers.js fills this symbol only
    assert [o.name for o in decoder.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]


@pytest.mark.slow
def test_caption_matches_pytorch(exported, model):
    runtime = OnnxCaptioner.from_pretrained(exported)
    processor = model.processor
    reference = processor(images=IMAGES)["pixel_values"].numpy()
    pixels = runtime.image_processor(IMAGES)
    np.testing.assert_allclose(pixels, reference, atol=1e-5)
    for num_beams in (1, 3):
        expected = model.caption(IMAGES, num_beams=num_beams, max_new_tokens=8)
        assert runtime.caption(IMAGES, num_beams=num_beams, max_new_tokens=8) == expected
        with torch.no_grad():
            ids = model.generate(torch.from_numpy(pixels), num_beams=num_beams, max_new_tokens=8).numpy()
        np.testing.assert_array_equal(runtime.generate({"pixel_values": pixels}, num_beams=num_beams,
                                                       max_new_tokens=8), ids)  # fmt: skip


def test_runtime_runs_without_torch(exported, tmp_path):
    """A subprocess where `import torch` raises: the runtime loads, captions (greedy, beam, sampling) and never
    imports torch, transformers or the `splice` package."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("torch", "transformers"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(IMAGES):
        image.save(images / f"{i}.png")
    script = f"""
import json, sys
from pathlib import Path
from PIL import Image
import splice_onnx
model = splice_onnx.OnnxCaptioner.from_pretrained({str(exported)!r})
images = [Image.open(p) for p in sorted(Path({str(images)!r}).glob("*.png"))]
out = {{"greedy": model.caption(images, num_beams=1, max_new_tokens=8),
        "beam": model.caption(images, num_beams=3, max_new_tokens=8),
        "sample": model.caption(images, num_beams=1, do_sample=True, seed=0, max_new_tokens=8)}}
assert not {{"torch", "transformers", "splice"}} & set(sys.modules), sorted(sys.modules)
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    runtime = OnnxCaptioner.from_pretrained(exported)
    opened = [__import__("PIL.Image").Image.open(images / f"{i}.png") for i in range(len(IMAGES))]
    assert got["greedy"] == runtime.caption(opened, num_beams=1, max_new_tokens=8)
    assert got["beam"] == runtime.caption(opened, num_beams=3, max_new_tokens=8)
    assert len(got["sample"]) == len(IMAGES)


def test_splice_caption_on_an_export(exported, model, tmp_path, capsys):
    from splice.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(IMAGES[:2]):
        image.save(folder / f"{i}.png")
    main(["caption", str(exported), str(folder), "--format", "jsonl", "--num-beams", "2", "--max-new-tokens", "6"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    from PIL import Image

    expected = model.caption([Image.open(folder / f"{i}.png") for i in range(2)], num_beams=2, max_new_tokens=6)
    assert [line["caption"] for line in lines] == expected


def _broken_copy(exported: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    return copy


def test_missing_file_is_one_clear_error(exported, tmp_path):
    copy = _broken_copy(exported, tmp_path)
    (copy / "onnx" / "decoder_model_merged.onnx").unlink()
    with pytest.raises(
        ExportFormatError,
        match=rf"decoder_model_merged.onnx is missing.*splice export MODEL_DIR {re.escape(str(copy))}`",
    ):
        OnnxCaptioner.from_pretrained(copy)
    (copy / "splice_onnx.json").unlink()
    with pytest.raises(ExportFormatError, match=r"splice_onnx.json is missing.*splice export"):
        OnnxCaptioner.from_pretrained(copy)


def test_truncated_graph_is_one_clear_error(exported, tmp_path):
    copy = _broken_copy(exported, tmp_path)
    path = copy / "onnx" / "encoder_model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportFormatError, match=r"encoder_model.onnx cannot be loaded.*truncated or corrupt.*export"):
        OnnxCaptioner.from_pretrained(copy)
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportFormatError, match="truncated or corrupt"):
        OnnxCaptioner.from_pretrained(copy)


def test_newer_format_is_one_clear_error(exported, tmp_path):
    copy = _broken_copy(exported, tmp_path)
    manifest = json.loads((copy / "splice_onnx.json").read_text())
    manifest.update(format_version=99, splice_version="9.0.0")
    (copy / "splice_onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportFormatError, match=r"format_version=99, written by splice 9.0.0.*Upgrade splice"):
        OnnxCaptioner.from_pretrained(copy)


def test_unsupported_setting_names_it(exported):
    runtime = OnnxCaptioner.from_pretrained(exported)
    with pytest.raises(ValueError, match=r"penalty_alpha=0.6.*does not implement"):
        runtime.caption(IMAGES[:1], penalty_alpha=0.6)
    with pytest.raises(ValueError, match=r"\['numbeams'\]"):
        runtime.caption(IMAGES[:1], numbeams=2)
    with pytest.raises(ExportFormatError, match="--quantize int8"):
        OnnxCaptioner.from_pretrained(exported, quantized=True)


def test_unimplemented_preprocessing_is_refused(tmp_path):
    """Donut's processor thumbnails and pads: the runtime names those steps instead of resizing to `size`."""
    from splice_onnx.processing import ImageProcessor

    config = {"do_resize": True, "size": {"height": 64, "width": 48}, "do_rescale": True, "do_thumbnail": True,
              "do_pad": True, "do_align_long_axis": False, "image_processor_type": "DonutImageProcessor"}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do_pad=True, do_thumbnail=True: preprocessing steps"):
        ImageProcessor.from_dir(tmp_path)
    config.update(do_thumbnail=False, do_pad=False, do_reduce_labels=False)  # steps turned off: accepted
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert ImageProcessor.from_dir(tmp_path).size == (64, 48)
