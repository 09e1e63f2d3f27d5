"""First contact with the command line: every user error one line (`splice CMD: error: what, where, fix`) and exit 2,
never a traceback; every flag explained with its default; `--help` without torch; quiet runs.

The rows of issue 19's table run as the console does (a fresh interpreter, `python -m splice_cli`); those that fail
before torch loads take a fraction of a second each, those that need a model are `slow` and also run in-process here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers
import yaml
from PIL import Image
from tiny import cli_decoder, cli_encoder

import splice_cli
from splice.cli import build_parser, main, preflight

ROOT = Path(__file__).resolve().parents[1]
ENCODER, DECODER = json.dumps(cli_encoder()), json.dumps(cli_decoder())
SMALL = ["--n-train", "4", "--n-eval", "2", "--epochs", "1", "--batch-size", "2", "--image-size", "32"]


def console(*argv: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`splice ARGV...` in a fresh interpreter, as the console script runs it."""
    environment = {k: v for k, v in os.environ.items() if k != "SPLICE_VERBOSE"}
    environment |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)} | (env or {})
    command = [sys.executable, "-m", "splice_cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=300)


def one_error_line(result: subprocess.CompletedProcess | str, command: str, code: int | None = 2) -> str:
    """The error line: exit 2, no traceback, exactly one `splice CMD: error:` line and it is the last one."""
    stderr = result if isinstance(result, str) else result.stderr
    if not isinstance(result, str):
        assert result.returncode == code, (result.returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr[-2000:]
    assert errors[0].startswith(f"splice {command}: error: "), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A folder of inputs: an image, an image folder without metadata, one with a bad row, a YAML with a typo."""
    root = tmp_path_factory.mktemp("first-contact")
    (root / "images").mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "images" / "a.png")
    for name in ("nometa", "badmeta"):
        (root / name).mkdir()
        Image.new("RGB", (32, 32), "red").save(root / name / "a.png")
    (root / "badmeta" / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": 42}) + "\n")
    (root / "typo.yaml").write_text("learning_rte: 0.001\n")
    (root / "empty-run").mkdir()
    return root


@pytest.fixture(scope="module")
def trained(files) -> Path:
    """A tiny captioner trained by `splice train` (with its processor and train_config.yaml): for the slow tests."""
    out = files / "captioner-trained"
    main(["train", "--encoder", ENCODER, "--decoder", DECODER, *SMALL, "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def captioner(files) -> Path:
    """A tiny random captioner saved as `splice train` saves one (model, processor, train_config.yaml), built in about
    a second instead of trained."""
    import yaml

    import splice
    from splice.data.builtin import train_tokenizer
    from splice.processing import SpliceProcessor, vit_image_processor_class

    out = files / "captioner"
    tokenizer = train_tokenizer(["a red square", "a blue circle on the left"])
    encoder = transformers.AutoConfig.for_model(**cli_encoder())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    decoder = transformers.AutoConfig.for_model(**cli_decoder(vocab_size=len(tokenizer), **ids))
    config = splice.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = splice.VisionEncoderDecoderModel(config)
    model.configure_special_tokens(tokenizer)
    model.generation_config.max_new_tokens = 8  # as `splice train` sets it (from the longest target)
    model.save_pretrained(out)
    SpliceProcessor(vit_image_processor_class()(size={"height": 32, "width": 32}), tokenizer).save_pretrained(out)
    (out / "train_config.yaml").write_text(yaml.safe_dump({"task": "caption", "data": "builtin:shapes"}))
    return out


@pytest.fixture(scope="module")
def gpt2_dirs(files) -> tuple[Path, Path]:
    """A GPT-2 checkpoint without and with an image processor file (both are text decoders, not encoders)."""
    plain, with_processor = files / "gpt2", files / "gpt2-with-processor"
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, n_positions=64, vocab_size=99)
    config.bos_token_id = config.eos_token_id = 2
    for folder in (plain, with_processor):
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor().to_json_file(with_processor / "preprocessor_config.json")
    return plain, with_processor


# The rows of the table that fail before torch loads: (name, argv, what the line says).
FAST_ROWS = {
    "folder without metadata": (
        ["train", "--data", "nometa", *SMALL],
        ["data='nometa'", "neither metadata.jsonl nor metadata.csv", "add metadata.jsonl"],
    ),
    "--resume in an empty output dir": (
        ["train", "--resume", "--output-dir", "empty-run", *SMALL],
        ["no checkpoint-N directory in 'empty-run'", "drop --resume"],
    ),
    "a path that does not exist": (
        ["caption", "/no/such/dir", "images"],
        ["model='/no/such/dir'", "no such file or directory", "check the path"],
    ),
    "YAML with a typo": (["train", "--config", "typo.yaml"], ["unknown keys ['learning_rte']", "'learning_rate'"]),
}


@pytest.mark.parametrize("row", sorted(FAST_ROWS))
def test_a_user_error_before_torch_is_one_line_and_exit_2_at_once(files, row):
    argv, expected = FAST_ROWS[row]
    start = time.perf_counter()
    result = console(*argv, cwd=files)
    seconds = time.perf_counter() - start
    line = one_error_line(result, argv[0])
    assert all(part in line for part in expected), line
    assert seconds < 10, f"{seconds:.1f} s: the check ran after torch loaded?"  # about 0.3 s; generous under load


def test_verbose_shows_the_stack_above_the_same_line(files, capsys, monkeypatch):
    argv = ["train", "--config", str(files / "typo.yaml")]
    for extra, variable in (["--verbose"], None), ([], "1"):
        if variable:
            monkeypatch.setenv("SPLICE_VERBOSE", variable)
        with pytest.raises(SystemExit) as exited:
            main(argv + extra, exit_on_error=True)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "Traceback" in err and "ConfigError" in err
        assert err.strip().splitlines()[-1].startswith("splice train: error: unknown keys") is False  # names the file
        assert err.strip().splitlines()[-1].startswith("splice train: error: ")


@pytest.mark.slow  # a fresh interpreter loading torch
def test_verbose_in_the_console(files):
    result = console("train", "--config", "typo.yaml", "--verbose", cwd=files)
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("splice train: error: typo.yaml: unknown keys")


def test_bad_metadata_row_is_one_line_naming_file_line_and_field(files, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--encoder", ENCODER, "--decoder", DECODER, "--data", str(files / "badmeta"), *SMALL],
             exit_on_error=True)  # fmt: skip
    assert exited.value.code == 2
    line = one_error_line(capsys.readouterr().err, "train", code=None)
    assert "metadata.jsonl:1" in line and "'text'" in line and "42" in line and "Fix:" in line


def test_resume_is_checked_before_the_model_is_built(files, monkeypatch):
    from splice.training import pipeline

    monkeypatch.setattr(pipeline, "build_model", lambda *a: pytest.fail("the model was built before the check"))
    with pytest.raises(ValueError, match="no checkpoint-N directory"):
        main(["train", "--encoder", ENCODER, "--decoder", DECODER, *SMALL, "--resume", "--output-dir",
              str(files / "empty-run")])  # fmt: skip


@pytest.mark.parametrize("which", [0, 1], ids=["no processor", "with a processor"])
def test_a_decoder_only_encoder_is_named_as_such(files, gpt2_dirs, capsys, which):
    with pytest.raises(SystemExit):
        main(["train", "--encoder", str(gpt2_dirs[which]), "--decoder", DECODER, *SMALL, "--output-dir",
              str(files / "never")], exit_on_error=True)  # fmt: skip
    line = one_error_line(capsys.readouterr().err, "train", code=None)
    assert "is a gpt2 checkpoint, a decoder-only language model" in line and "--decoder" in line
    assert not (files / "never").exists()  # refused before anything was written


def test_max_new_tokens_beyond_the_decoder_is_one_line(captioner, files, capsys):
    with pytest.raises(SystemExit):
        main(["caption", str(captioner), str(files / "images"), "--max-new-tokens", "1000"], exit_on_error=True)
    line = one_error_line(capsys.readouterr().err, "caption", code=None)
    assert "--max-new-tokens 1000" in line and "at most 63" in line


def test_eval_of_another_task_warns_naming_both(captioner, capsys):
    main(["eval", str(captioner), "builtin:ocr", "--n", "2"])
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "trained for task 'caption'" in warning[0] and "task 'ocr'" in warning[0]
    assert "ocr metrics (CER, WER, exact match)" in err


def test_final_metrics_say_what_they_are_scored_on(tmp_path):
    from splice.training.config import TrainConfig
    from splice.training.pipeline import metrics_label

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a", "target": "b"}\n')
    on_training = metrics_label(TrainConfig(data=str(pairs)), "all 1 reference per item, 1 items")
    assert on_training.startswith("metrics on the training data") and not on_training.startswith("held-out")
    held_out = metrics_label(TrainConfig(data="builtin:shapes"), "all 5 references per item, 2 items")
    assert held_out.startswith("held-out metrics") and "builtin:shapes (seed 1)" in held_out
    with_eval = metrics_label(TrainConfig(data=str(pairs), eval_data=str(pairs)), "x")
    assert with_eval.startswith("held-out metrics") and str(pairs) in with_eval


@pytest.mark.slow  # trains (about 10 s)
def test_train_without_eval_data_on_files_never_calls_its_metrics_held_out(files, capsys):
    folder = files / "with-meta"
    folder.mkdir()
    Image.new("RGB", (32, 32), "blue").save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a blue square"}) + "\n")
    main(["train", "--encoder", ENCODER, "--decoder", DECODER, "--data", str(folder), *SMALL, "--output-dir",
          str(files / "on-train")])  # fmt: skip
    final = [line for line in capsys.readouterr().err.splitlines() if line.startswith("final ")]
    assert len(final) == 1 and final[0].startswith("final metrics on the training data"), final
    assert yaml.safe_load((files / "on-train" / "train_config.yaml").read_text())["task"] == "caption"


def test_quiet_caption_no_mask_or_torchvision_warning(captioner, capsys, caplog):
    model = transformers.AutoModelForImageTextToText.from_pretrained(captioner)
    model.decoder.config.pad_token_id = model.config.decoder_start_token_id  # GPT-2's own setting: pad = start
    with caplog.at_level(logging.WARNING):
        model.caption([Image.new("RGB", (32, 32))] * 3, max_new_tokens=4)
    said = caplog.text + capsys.readouterr().err
    assert "attention_mask" not in said and "torchvision" not in said


def test_tensorboard_reporting_selects_its_tensorflow_stub(monkeypatch):
    from splice.training.pipeline import _reporters

    monkeypatch.delitem(sys.modules, "tensorboard.compat.notf", raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as in a run that has not imported it
    assert _reporters() == ["tensorboard"] and "tensorboard.compat.notf" in sys.modules


@pytest.mark.slow  # a fresh interpreter loading torch and transformers
def test_tensorboard_reporting_does_not_import_tensorflow():
    code = (
        "import sys; from splice.training.pipeline import _reporters; from transformers.integrations import "
        "TensorBoardCallback; assert _reporters() == ['tensorboard']; TensorBoardCallback(); "
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


def test_the_vit_image_processor_needs_no_torchvision(caplog):
    from splice.processing import vit_image_processor_class

    with caplog.at_level(logging.WARNING):
        processor = vit_image_processor_class()(size={"height": 32, "width": 32})
    assert "torchvision" not in caplog.text
    assert processor(Image.new("RGB", (40, 20)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


# --help: every command, fast, every flag explained with its default.
def parsers(name: str) -> list[argparse.ArgumentParser]:
    """The parser of command `name` and its sub-actions' (`datastore build|query`)."""
    top = build_parser([name])
    command = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    found = [command]
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.values())
    return found


@pytest.mark.parametrize("name", sorted(splice_cli.COMMANDS))
def test_every_flag_has_help_and_shows_its_default(name):
    for parser in parsers(name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            where = f"splice {name} ({parser.prog}): {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help text"
            has_default = action.option_strings and not any(action.default is v for v in (None, False))
            has_default = has_default and action.default != argparse.SUPPRESS
            if has_default:
                text = parser.formatter_class(parser.prog)._get_help_string(action)
                assert "default" in text, f"{where}: its default {action.default!r} is not shown"


@pytest.mark.parametrize("name", sorted(splice_cli.COMMANDS))
def test_help_of_every_command_loads_no_torch(name):
    code = (
        f"import sys, splice_cli\ntry: splice_cli.main([{name!r}, '--help'])\nexcept SystemExit as e: code = e.code\n"
        "print(code, sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    seconds = time.perf_counter() - start
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout[-2000:] + result.stderr[-2000:]
    assert "usage: splice" in result.stdout and seconds < 10  # about 0.2 s; generous under load


def test_the_cheap_copies_equal_the_library_tuples():
    from splice.cli.datastore import KEY_KINDS
    from splice.retrieval import KEY_KINDS as LIBRARY_KEY_KINDS

    assert KEY_KINDS == LIBRARY_KEY_KINDS


# A bounded fuzz: random argument combinations through the console's parse-and-check step: one line and exit 2, a
# help page and exit 0, or success (the command would run) — never a traceback.
WORDS = {
    "train": ["--epochs", "-1", "0", "2", "--batch-size", "abc", "--data", "builtin:x", "nometa", "badmeta", "--config",
              "typo.yaml", "missing.yaml", "--encoder", "/no/such", "{bad", "--resume", "--output-dir", "empty-run",
              "--freeze", "decoder", "--image-size", "[8]", "--learning-rate", "nan", "--task", "text", "--nope"],
    "caption": ["/no/such/dir", "images", "captioner", "nothing*.png", "--batch-size", "0", "--num-beams", "x",
                "--format", "xml", "--output", "/no/dir/out.txt", "--max-new-tokens", "-3", "--datastore"],
    "eval": ["captioner", "/no/such", "builtin:shapes", "builtin:ocr", "nometa", "x.txt", "--task", "text", "--seed",
             "-1", "99999999999", "--n", "0", "--batch-size"],
    "datastore": ["build", "query", "--captions", "--embedder", "--keys", "pixels", "--output", "--k", "0", "images"],
    "demo": ["--task", "ocr", "poetry", "--output-dir", "--quick", "--bogus"],
}  # fmt: skip


def fuzz_cases(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[name] + rng.choices(WORDS[name], k=rng.randint(0, 6)) for name in rng.choices(sorted(WORDS), k=count)]


def test_fuzzed_argument_combinations_give_one_line_or_success(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    outcomes = {"error": 0, "help": 0, "ok": 0}
    for argv in fuzz_cases(300, seed=19):
        try:
            preflight(argv)
            outcomes["ok"] += 1
        except SystemExit as exited:
            err = capsys.readouterr().err
            if exited.code == 0:
                outcomes["help"] += 1
                continue
            assert exited.code == 2, (argv, exited.code, err)
            lines = [line for line in err.splitlines() if line.strip()]
            assert lines and lines[-1].startswith(f"splice {argv[0]}: error: ") or "usage:" in err, (argv, err)
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 0, outcomes


@pytest.mark.slow  # fresh interpreters loading torch (about 10 s each)
def test_fuzzed_console_runs_give_one_line_or_success(files, trained):
    for argv in fuzz_cases(12, seed=7):
        if argv[0] in ("train", "demo", "datastore") and len(argv) < 3:
            continue  # would train or build for minutes: the in-process fuzz covers their parsing
        argv = [word.replace("captioner", str(trained)) for word in argv]
        result = console(*argv, cwd=files)
        if result.returncode != 0:
            assert result.returncode == 2 and "Traceback" not in result.stderr, (argv, result.stderr[-2000:])


@pytest.mark.slow  # fresh interpreters loading torch (about 10 s each)
def test_every_row_of_the_table_as_the_console_runs_it(files, trained, gpt2_dirs):
    rows = [
        (["train", "--encoder", ENCODER, "--decoder", DECODER, "--data", "badmeta", *SMALL], "metadata.jsonl:1"),
        (["caption", str(trained), "images", "--max-new-tokens", "1000"], "at most 63"),
        (["train", "--encoder", str(gpt2_dirs[0]), "--decoder", DECODER, *SMALL], "decoder-only language model"),
        (["train", "--encoder", str(gpt2_dirs[1]), "--decoder", DECODER, *SMALL], "decoder-only language model"),
        (["caption", "no/such/dir", "images"], "no such file or directory"),
    ]
    for argv, expected in rows:
        assert expected in one_error_line(console(*argv, cwd=files), argv[0])
    result = console("eval", str(trained), "builtin:ocr", "--n", "2", cwd=files)
    assert result.returncode == 0 and "warning: " in result.stderr and "trained for task 'caption'" in result.stderr
