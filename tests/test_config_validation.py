"""Bad values in `splice train` flags, YAML and `caption`/`eval` flags: one clear line naming the field and the value.

Each test is one input found by trying bad input on purpose; before, each ran untrained, crashed with a traceback or
said something unrelated.
"""

import json
import logging

import pytest
import yaml
from tiny import cli_decoder, cli_encoder, gpt2_config, vit_config
from transformers import GPT2LMHeadModel, ViTModel

import splice
from splice.cli import main
from splice.cli.train import parse_config
from splice.training import config as config_module
from splice.training.config import ConfigError, TrainConfig

ENCODER, DECODER = cli_encoder(), cli_decoder()


def console(capsys, *argv: str) -> str:
    """Run `splice ARGV` as the console does; it must exit 2 with one line `splice CMD: error: ...`."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv), exit_on_error=True)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"splice {argv[0]}: error: ")
    return lines[0]


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_epochs_must_be_positive(capsys, epochs):
    line = console(capsys, "train", "--epochs", epochs)
    assert f"epochs={float(epochs)}" in line and "> 0" in line and "--epochs 3" in line


def test_yaml_numbers_given_as_strings_are_coerced(tmp_path):
    config = parse_config(["--config", write_yaml(tmp_path, 'learning_rate: 1e-3\nbatch_size: "4"\n')])
    assert config.learning_rate == 1e-3 and isinstance(config.learning_rate, float)
    assert config.batch_size == 4 and isinstance(config.batch_size, int)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("batch_size", 0, "≥ 1"),
        ("batch_size", "4.5", "not a fraction"),
        ("num_beams", 0, "≥ 1"),
        ("learning_rate", 0, "> 0"),
        ("learning_rate", "fast", "> 0"),
        ("warmup_ratio", 1, "< 1"),
        ("warmup_ratio", -0.1, "≥ 0"),
        ("n_train", 0, "≥ 1"),
        ("n_eval", 0, "≥ 1"),
        ("max_new_tokens", 0, "≥ 1"),
        ("epochs", "nan", "> 0"),
        ("image_size", 4, "≥ 8"),
        ("image_size", [32], "[width, height]"),
        ("freeze", "decoder", "encoder+decoder"),
        ("conditioning", "cross", "injected"),
        ("task", "vqa", "caption, ocr, text"),
        ("preset", "blip", "smallcap"),
        ("resume", "maybe", "true or false"),
        ("data_options", [1], "mapping"),
    ],
)
def test_out_of_range_yaml_values_name_field_value_range_and_fix(tmp_path, field, value, expected):
    with pytest.raises(ConfigError) as error:
        TrainConfig.from_yaml(write_yaml(tmp_path, yaml.safe_dump({field: value})))
    message = str(error.value)
    assert message.startswith(f"{field}={value!r}") and expected in message
    assert f"--{field.replace('_', '-')}" in message  # the fix names the flag


def test_yaml_batch_size_string_in_range_is_accepted_and_out_of_range_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size='0': must be an integer ≥ 1"):
        TrainConfig.from_yaml(write_yaml(tmp_path, 'batch_size: "0"\n'))


def test_yaml_top_level_must_be_a_mapping(tmp_path, capsys):
    line = console(capsys, "train", "--config", write_yaml(tmp_path, "a bare string\n"))
    assert "top level is a str ('a bare string'), not a mapping" in line and "unknown keys" not in line
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 1"):
        TrainConfig.from_yaml(write_yaml(tmp_path, "epochs: [1\n"))
    with pytest.raises(ConfigError, match="cannot read it"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_task_must_fit_the_data(tmp_path, capsys):
    line = console(capsys, "train", "--task", "text")
    assert "task='text'" in line and "data='builtin:shapes'" in line and "implies task='caption'" in line
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a", "target": "b"}\n')
    with pytest.raises(ConfigError, match="holds text pairs, which implies task='text'"):
        TrainConfig(data=str(pairs), task="caption")
    with pytest.raises(ConfigError, match="eval_data=.* holds text pairs but data='builtin:shapes' holds images"):
        TrainConfig(eval_data=str(pairs))
    assert TrainConfig(data="builtin:ocr", task="caption").task == "caption"  # images either way


def test_image_size_flag_must_be_a_size(capsys):
    line = console(capsys, "train", "--image-size", "abc")
    assert "image_size='abc'" in line and "≥ 8" in line and "--image-size 64" in line
    assert parse_config(["--image-size", "[160, 32]"]).image_size == [160, 32]
    assert parse_config(["--image-size", "48"]).image_size == 48


def test_bad_json_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--encoder", "{not json"])
    assert exit_info.value.code == 2 and "is not valid JSON" in capsys.readouterr().err


def test_encoder_config_dict_needs_model_type():
    with pytest.raises(ConfigError, match="encoder=.*model_type"):
        TrainConfig(encoder={"hidden_size": 32})


def test_choice_copies_match_their_modules():
    from splice.conditioning import CONDITIONINGS
    from splice.training.freezing import FREEZE_POLICIES

    assert config_module.CONDITIONINGS == CONDITIONINGS and config_module.FREEZE_POLICIES == FREEZE_POLICIES


def test_caption_empty_folder_is_an_error_naming_the_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = console(capsys, "caption", str(tmp_path), str(tmp_path / "empty"))
    assert "hold no image file" in line and "empty" in line
    line = console(capsys, "caption", str(tmp_path), str(tmp_path / "*.png"))
    assert "no such file, folder or glob match" in line and "*.png" in line


@pytest.mark.parametrize("flag", ["--batch-size", "--num-beams", "--max-new-tokens"])
def test_caption_count_flags_must_be_at_least_one(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(tmp_path), "x.png", flag, "0"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be an integer ≥ 1, got '0'" in capsys.readouterr().err


def test_eval_flags_and_task_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "builtin:shapes", "--batch-size", "0"])
    assert "argument --batch-size: must be an integer ≥ 1" in capsys.readouterr().err
    line = console(capsys, "eval", str(tmp_path), "builtin:shapes", "--task", "text")
    assert "implies task='caption'" in line


def test_missing_hub_model_is_one_line_naming_the_id(tmp_path, capsys):
    line = console(capsys, "train", "--n-train", "2", "--n-eval", "1", "--output-dir", str(tmp_path))
    assert "'openai-community/gpt2'" in line
    assert "not found locally and the hub is unreachable (HF_HUB_OFFLINE=1?)" in line
    line = console(capsys, "caption", "no-such/model", str(tmp_path))
    assert "hold no image file" in line  # inputs are checked first, before any loading


def test_caption_model_without_processor_files_says_which_and_how(tmp_path, capsys):
    encoder = ViTModel(vit_config())
    decoder = GPT2LMHeadModel(gpt2_config(add_cross_attention=True, is_decoder=True))
    model = splice.VisionEncoderDecoderModel.from_encoder_decoder_pretrained(
        encoder_model=encoder, decoder_model=decoder, conditioning="native"
    )
    model.save_pretrained(tmp_path / "model")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    line = console(capsys, "caption", str(tmp_path / "model"), str(tmp_path / "a.png"))
    assert "missing processor_config.json or preprocessor_config.json, tokenizer_config.json or tokenizer.json" in line
    assert "SpliceProcessor(image_processor, tokenizer).save_pretrained(" in line
    line = console(capsys, "caption", str(tmp_path), str(tmp_path / "a.png"))
    assert "has no config.json" in line


@pytest.mark.slow  # a training run with the held-out metrics, end to end (`-m slow`, .ci/run's own step)
def test_training_warns_about_eval_data_and_labels_references(tmp_path, capsys, caplog):
    flags = ["train", "--encoder", json.dumps(ENCODER), "--decoder", json.dumps(DECODER), "--n-train", "8"]
    flags += ["--n-eval", "2", "--batch-size", "8", "--image-size", "32", "--epochs", "1"]
    with caplog.at_level(logging.WARNING, logger="splice.training.pipeline"):
        main([*flags, "--output-dir", str(tmp_path)])
    warnings = [r.getMessage() for r in caplog.records if "eval_data not set" in r.getMessage()]
    assert len(warnings) == 1 and "scoring held-out samples generated with another seed" in warnings[0]
    state = json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())
    assert any("eval_cider_1ref" in entry for entry in state["log_history"])  # per-epoch: one reference
    assert "final held-out metrics, all 5 references per item, 2 items" in capsys.readouterr().err


def test_eval_data_equal_to_training_data_warns_not_held_out(caplog, tmp_path):
    from splice.training.pipeline import warn_eval_data

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a", "target": "b"}\n')
    with caplog.at_level(logging.WARNING, logger="splice.training.pipeline"):
        warn_eval_data(TrainConfig(data=str(pairs)))
    assert "eval data = training data" in caplog.text and "these metrics are not held-out" in caplog.text


def test_demo_summary_says_how_many_references(monkeypatch, capsys, tmp_path):
    from splice.cli import demo

    class Stub:
        def caption(self, images):
            return ["a caption"] * len(images)

    monkeypatch.setattr("splice.training.pipeline.train", lambda config: {"cider": 0.5})
    monkeypatch.setattr(splice.VisionEncoderDecoderModel, "from_pretrained", classmethod(lambda cls, path: Stub()))
    demo.run_demo("shapes", str(tmp_path), quick=True)
    printed = capsys.readouterr().out
    assert "held-out metrics (4 items, each scored against all 5 references;" in printed and "_1ref" in printed


def test_data_checks_are_one_function_without_a_training_config(tmp_path):
    from splice.training.config import check_data

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"source": "a", "target": "b"}\n')
    assert check_data("builtin:ocr") == "ocr" and check_data(str(pairs)) == "text"
    assert check_data("builtin:ocr", "caption") == "caption"
    for data, task in (("builtin:shapes", "text"), ("builtin:nope", None), (str(tmp_path / "x.txt"), None)):
        with pytest.raises(ConfigError) as from_check:
            check_data(data, task)
        with pytest.raises(ConfigError) as from_config:
            TrainConfig(data=data, task=task)
        assert str(from_check.value) == str(from_config.value)
    with pytest.raises(ConfigError, match="task='captions': must be one of caption, ocr, text"):
        check_data("builtin:shapes", "captions")
