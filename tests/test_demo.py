"""The offline demo runs end to end (`--quick`: a few steps; the full run is the README's main job)."""

import pytest

import splice
from splice.cli import main


@pytest.mark.slow  # demo runs, end to end (`-m slow`, .ci/run's own step)
@pytest.mark.parametrize("task", ["shapes", "ocr"])
def test_demo_quick_trains_saves_and_captions(tmp_path, capsys, task):
    main(["demo", "--task", task, "--output-dir", str(tmp_path), "--quick"])
    printed = capsys.readouterr().out
    assert f"splice demo ({task})" in printed and printed.count("generated: ") == 4
    assert ("cer" if task == "ocr" else "cider") in printed
    assert task == "ocr" or "held-out slot accuracy" in printed
    model = splice.VisionEncoderDecoderModel.from_pretrained(tmp_path)
    assert model.config.conditioning == "native"
