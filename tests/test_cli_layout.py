"""The upper layers' layout: every `splice train` flag documented, imports pointing down the layers only."""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from splice.cli import main
from splice.training.config import TrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "splice"
# Upper-layer packages and the ones each may not import (function-level imports included).
FORBIDDEN = {
    "data": ("splice.cli", "splice.training", "splice.retrieval", "splice.inference", "splice.models"),
    "retrieval": ("splice.cli", "splice.training"),
    "training": ("splice.cli",),
}


def _imports(path: Path) -> set[str]:
    """Absolute names of the splice modules a file imports."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.update([module] + [f"{module}.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("splice")}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_upper_layers_import_downwards_only(layer):
    for path in (PACKAGE / layer).rglob("*.py"):
        bad = {name for name in _imports(path) if name.startswith(FORBIDDEN[layer])}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
    assert not _imports(PACKAGE / "data_io.py")  # below every layer: imports nothing of splice


def test_every_train_flag_has_help_with_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.count("(default: ") == len(dataclasses.fields(TrainConfig))  # one per field, so one per flag
    for choices in ("none,encoder,encoder+decoder", "native,injected,prefix,auto", "caption,ocr,text", "smallcap"):
        assert "{" + choices + "}" in text
    with pytest.raises(SystemExit):
        main(["train", "--freeze", "decoder"])
    assert "invalid choice: 'decoder'" in capsys.readouterr().err


@pytest.mark.slow  # fresh interpreters (`-m slow`, .ci/run's own step)
def test_help_builds_no_command_and_python_m_works():
    code = "import sys; from splice.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    code += "print(sorted(m for m in sys.modules if m.startswith(('splice.training.', 'splice.retrieval'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # The overview builds no command: nothing of training or retrieval beyond the flag definitions' config module.
    assert set(ast.literal_eval(loaded.strip().splitlines()[-1])) <= {"splice.training.config"}
    listed = subprocess.run([sys.executable, "-m", "splice.cli", "--help"], capture_output=True, text=True, check=True)
    assert "datastore" in listed.stdout


def test_the_console_overview_loads_neither_torch_nor_splice():
    code = "import sys, splice_cli\ntry: splice_cli.main(['--help'])\nexcept SystemExit: pass\n"
    code += "print(sorted(m for m in ('torch', 'transformers', 'splice') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "caption images with a trained model" in loaded.stdout  # the overview was printed
    assert loaded.stdout.strip().endswith("[]")


def test_the_from_scratch_example_in_train_help_holds_valid_configs():
    import json
    import re

    from transformers import AutoConfig

    from splice.cli.train import EXAMPLES

    configs = [json.loads(text) for text in re.findall(r"'(\{.*?\})'", EXAMPLES, re.S)]
    assert [c["model_type"] for c in configs] == ["vit", "gpt2"]
    for config in configs:
        AutoConfig.for_model(**config)
