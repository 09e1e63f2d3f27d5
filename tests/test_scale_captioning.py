"""`splice caption --ray` (Ray Data, an actor pool of 2) on one local 2-CPU cluster for the module (slow): the captions
equal single-process `splice caption` row for row (a PyTorch model directory, and its `splice export` on onnxruntime),
unreadable inputs are rows with their error, a re-run captions only what is missing, manifests name images, and an
output written by another model is refused."""

import json
from pathlib import Path

import pytest
from serve_tiny import image, save_captioner

from splice.cli import main
from splice.export import export_onnx
from splice.scale.captioning import Options, caption_on_ray, read_output
from splice.training.config import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    model = save_captioner(root / "model")
    folder = root / "images"
    folder.mkdir()
    for i in range(24):
        image(i).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return model, folder


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    model, _ = corpus
    return export_onnx(model, tmp_path_factory.mktemp("export") / "onnx", check=False, progress=None)


def single_process(model: Path, inputs: list[str], output: Path) -> dict[str, str]:
    main(["caption", str(model), *inputs, "--format", "jsonl", "--output", str(output), "--batch-size", "5"])
    return {r["file"]: r["caption"] for r in map(json.loads, output.read_text().splitlines())}


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_captions_equal_single_process_and_unreadable_inputs_are_listed(corpus, tmp_path, suffix, capsys):
    model, folder = corpus
    alone = single_process(model, [str(folder)], tmp_path / "alone.jsonl")
    output = tmp_path / f"captions{suffix}"
    main(["caption", str(model), str(folder), "--ray", "--workers", "2", "--batch-size", "4", "--output", str(output)])
    rows = read_output(output)
    assert len(rows) == 25 and {r["model"] for r in rows} == {str(model)}
    assert {r["file"]: r["caption"] for r in rows if r["error"] is None} == alone  # row for row, 24 images
    (broken,) = [r for r in rows if r["error"] is not None]
    assert broken["file"] == str(folder / "broken.png") and broken["caption"] is None
    assert "cannot read the image" in broken["error"]
    assert "captioned 24 image(s)" in capsys.readouterr().err


def test_an_onnx_export_captions_as_single_process_splice_caption_on_it(corpus, exported, tmp_path):
    _, folder = corpus
    alone = single_process(exported, [str(folder)], tmp_path / "alone.jsonl")  # onnxruntime, one process
    assert len(alone) == 24 and len(set(alone.values())) > 1  # captions vary by image: rows cannot match by accident
    output = tmp_path / "captions.parquet"
    flags = ["--ray", "--workers", "2", "--batch-size", "4", "--output", str(output)]
    main(["caption", str(exported), str(folder), *flags])
    rows = read_output(output)
    assert {r["model"] for r in rows} == {str(exported)}
    assert {r["file"]: r["caption"] for r in rows if r["error"] is None} == alone  # row for row
    with pytest.raises(ConfigError, match="--datastore 'captions.faiss': .* is an export .* PyTorch model directory"):
        main(["caption", str(exported), str(folder), "--ray", "--datastore", "captions.faiss", "--output", str(output)])


def test_rerun_captions_only_what_is_missing(corpus, tmp_path):
    model, folder = corpus
    files = sorted(str(p) for p in folder.glob("0*.png"))
    output = tmp_path / "captions.parquet"
    first = caption_on_ray(files[:10], str(model), output, workers=2, batch_size=4)
    assert (first.captioned, first.already_done) == (10, 0)
    second = caption_on_ray(files, str(model), output, workers=2, batch_size=4)
    assert (second.captioned, second.already_done) == (14, 10)
    rows = read_output(output)
    assert sorted(r["file"] for r in rows) == files  # each input once
    third = caption_on_ray(files, str(model), output, workers=1)
    assert (third.captioned, third.already_done) == (0, 24)


def test_manifest_names_images_relative_to_its_folder(corpus, tmp_path):
    model, folder = corpus
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"file": f"{i:03d}.png", "label": i}) + "\n" for i in (3, 1, 4)))
    output = tmp_path / "captions.jsonl"
    main(["caption", str(model), str(manifest), "--ray", "--output", str(output)])
    alone = single_process(model, [str(folder / f"{i:03d}.png") for i in (3, 1, 4)], tmp_path / "alone.jsonl")
    assert {r["file"]: r["caption"] for r in read_output(output)} == alone
    manifest.unlink()


def test_errors_name_the_flag_and_the_fix(corpus, tmp_path):
    model, folder = corpus
    with pytest.raises(ConfigError, match=r"--output .*captions.txt.*\.parquet or \.jsonl"):
        main(["caption", str(model), str(folder), "--ray", "--output", str(tmp_path / "captions.txt")])
    with pytest.raises(ConfigError, match="--ray: give --output"):
        main(["caption", str(model), str(folder), "--ray"])
    output = tmp_path / "captions.parquet"
    caption_on_ray([str(folder / "000.png")], str(model), output, Options(max_new_tokens=3), model_id="old-model")
    with pytest.raises(ValueError, match="holds captions by model 'old-model'.*another --output"):
        caption_on_ray([str(folder / "000.png")], str(model), output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": 1}\n')
    with pytest.raises(ConfigError, match="line 1.*no field file / path / image"):
        main(["caption", str(model), str(bad), "--ray", "--output", str(output)])
