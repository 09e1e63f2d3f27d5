"""`splice export` and `splice serve` report a user's mistake through the command line's one error path: one line
`splice CMD: error: ...` naming the flag or path, its value and the fix, exit status 2 (no traceback, no exit 1)."""

import json

import pytest

from splice.cli import main, preflight


def _one_line_exit_2(argv, capsys, *fragments, run=main) -> str:
    with pytest.raises(SystemExit) as exited:
        run(argv, exit_on_error=True) if run is main else run(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"splice {argv[0]}: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_export_of_a_directory_without_config(tmp_path, capsys):
    _one_line_exit_2(["export", str(tmp_path), str(tmp_path / "out")], capsys, "MODEL=", "config.json",
                     "save_pretrained")  # fmt: skip
    _one_line_exit_2(["export", str(tmp_path), str(tmp_path / "out")], capsys, "config.json", run=preflight)


def test_export_opset_out_of_range(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    _one_line_exit_2(["export", str(tmp_path), str(tmp_path / "out"), "--opset", "9"], capsys, "--opset=9", "14 to 20")


def test_export_refusal_is_one_line(tmp_path, capsys):
    """A model the exporter refuses (`ExportError`, raised deep in `export_onnx`) reaches the same path."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _one_line_exit_2(["export", str(tmp_path), str(tmp_path / "out")], capsys, "model=")


def test_serve_bad_flags_and_directories(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    _one_line_exit_2(["serve", missing], capsys, "MODEL_DIR=", "no such directory", "splice export")
    _one_line_exit_2(["serve", missing], capsys, "MODEL_DIR=", run=preflight)
    _one_line_exit_2(["serve", str(tmp_path), "--max-wait-ms", "-1"], capsys, "--max-wait-ms=-1.0", "≥ 0")
    _one_line_exit_2(["serve", str(tmp_path)], capsys, "config.json")  # a directory that is no model


def test_serve_a_broken_export_is_one_line(tmp_path, capsys):
    (tmp_path / "splice_onnx.json").write_text(json.dumps({"format_version": 99, "splice_version": "9.0"}))
    _one_line_exit_2(["serve", str(tmp_path)], capsys, "format_version=99", "Upgrade splice")
