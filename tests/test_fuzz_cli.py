"""Property-based: random `splice train` flags and YAML documents into the config parsing (never training).

Every outcome is a valid `TrainConfig` or a `ConfigError` / `SystemExit(2)` with a message; any other exception is a
bug. `run_fuzz(n)` runs the same property `n` times outside pytest (a benchmark or a long soak) and counts outcomes.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splice.cli.train import parse_config
from splice.training.config import ConfigError, TrainConfig

FIELDS = [
    "encoder", "decoder", "conditioning", "model_kwargs", "freeze", "lora_rank", "data", "eval_data", "task",
    "data_options", "n_train", "n_eval", "image_size", "tokenizer", "output_dir", "epochs", "batch_size",
    "learning_rate", "weight_decay", "warmup_ratio", "max_new_tokens", "num_beams", "feature_cache", "resume", "seed",
    "logging_steps", "save_total_limit", "preset", "datastore", "retrieval_embedder", "retrieval_k",
]  # fmt: skip
TEXTS = st.sampled_from(
    ["-1", "0", "1", "4", "1e-3", "0.5", "1.0", "nan", "inf", "-inf", "abc", "", " ", "[32, 64]", "[8]", "{}",
     '{"model_type": "vit"}', "{bad", "[1, 2, 3]", "true", "no", "none", "builtin:shapes", "builtin:ocr",
     "builtin:x", "caption", "text", "ocr", "encoder", "smallcap", "auto", "native", "1e400", "4.5", "²", "٣",
     "0x10", "1_000", "--epochs", "null", "~"]
) | st.text(max_size=12)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | TEXTS
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3),
                      max_leaves=6)  # fmt: skip
FLAGS = st.lists(st.tuples(st.sampled_from(FIELDS), TEXTS), max_size=4)
DOCUMENTS = st.dictionaries(st.sampled_from(FIELDS) | TEXTS, VALUES, max_size=4) | VALUES


def outcome(flags: list[tuple[str, str]], document: Any, folder: Path) -> str:
    """Parse `document` as a `--config` file plus `flags`; the outcome's kind, or raise for any other exception."""
    argv = [word for name, value in flags for word in ("--" + name.replace("_", "-"), value)]
    if document is not None:
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
        argv = ["--config", str(path), *argv]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            config = parse_config(argv)
    except ConfigError as error:
        assert str(error).strip() and "\n" not in str(error), repr(error)
        return "config_error"
    except SystemExit as error:
        assert error.code == 2 and "error:" in stderr.getvalue(), (error.code, stderr.getvalue())
        return "argparse_error"
    assert isinstance(config, TrainConfig)
    assert isinstance(config.epochs, float) and config.epochs > 0 and isinstance(config.batch_size, int)
    assert config.batch_size >= 1 and config.learning_rate > 0 and 0 <= config.warmup_ratio < 1
    return "valid"


def property_test(max_examples: int, counts: Counter) -> Any:
    """The property as a hypothesis test function (call it to run), counting outcomes into `counts`."""

    @settings(
        max_examples=max_examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(flags=FLAGS, document=st.none() | DOCUMENTS)
    def check(flags: list[tuple[str, str]], document: Any) -> None:
        with tempfile.TemporaryDirectory() as folder:
            counts[outcome(flags, document, Path(folder))] += 1

    return check


def run_fuzz(n: int = 3000) -> dict[str, int]:
    """Run the property on `n` random cases; the count of each outcome (`valid`, `config_error`, `argparse_error`).

    Raises:
        the first unexpected exception, shrunk by hypothesis to a minimal input.
    """
    counts: Counter = Counter()
    property_test(n, counts)()
    return dict(counts)


def test_random_flags_and_yaml_give_a_config_or_a_clear_error():
    counts: Counter = Counter()
    property_test(150, counts)()
    assert counts["config_error"] and sum(counts.values()) >= 100


def test_known_good_documents_parse(tmp_path):
    document = {"learning_rate": "1e-3", "batch_size": "4", "epochs": "0.5", "image_size": [160, 32]}
    assert outcome([("num_beams", "2")], document, tmp_path) == "valid"


if __name__ == "__main__":
    print(run_fuzz(3000))
