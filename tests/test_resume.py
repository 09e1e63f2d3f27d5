"""Exact resume: a run interrupted after a checkpoint and resumed with `--resume` ends with the weights of the
uninterrupted run — for every training policy — and a checkpoint that does not match the model is an error."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny import cli_decoder, cli_encoder

from splice.cli import main
from splice.training import trainer as trainer_module
from splice.training.trainer import LIVE_WEIGHTS, CheckpointMismatchError

ENCODER, DECODER = cli_encoder(), cli_decoder(n_positions=128)
BASE = ["train", "--encoder", json.dumps(ENCODER), "--decoder", json.dumps(DECODER), "--n-eval", "4",
        "--batch-size", "8", "--image-size", "32", "--logging-steps", "1"]  # fmt: skip

POLICIES = {
    "freeze-none": ["--freeze", "none"],
    "freeze-encoder+feature-cache": ["--freeze", "encoder"],
    "lora": ["--freeze", "encoder+decoder", "--lora-rank", "4"],
    "smallcap": ["--preset", "smallcap"],
}


def final_weights(directory) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("policy", list(POLICIES))
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tmp_path, monkeypatch, policy):
    flags = [*BASE, "--n-train", "16", "--epochs", "2", *POLICIES[policy]]
    main([*flags, "--output-dir", str(tmp_path / "straight")])

    save = trainer_module.SpliceTrainer._save_checkpoint

    def crash_after_first_checkpoint(self, model, trial):
        save(self, model, trial)
        raise Interrupted  # the process dies right after checkpoint-2 is on disk

    monkeypatch.setattr(trainer_module.SpliceTrainer, "_save_checkpoint", crash_after_first_checkpoint)
    with pytest.raises(Interrupted):
        main([*flags, "--output-dir", str(tmp_path / "interrupted")])
    monkeypatch.setattr(trainer_module.SpliceTrainer, "_save_checkpoint", save)
    assert (tmp_path / "interrupted" / "checkpoint-2" / LIVE_WEIGHTS).is_file()
    main([*flags, "--output-dir", str(tmp_path / "interrupted"), "--resume"])

    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "interrupted")
    initial = final_weights(tmp_path / "interrupted" / "checkpoint-2")
    assert max_difference(straight, initial) > 1e-4  # the second epoch changed the weights: the check can fail
    print(f"resume [{policy}]: max |uninterrupted - resumed| = {max_difference(straight, resumed):.3g}")
    assert max_difference(straight, resumed) <= 1e-6


@pytest.mark.slow  # end to end: a trainer process killed mid-epoch, then resumed (`-m slow`, .ci/run's own step)
def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path):
    flags = [*BASE, "--n-train", "64", "--epochs", "2", "--freeze", "none"]
    main([*flags, "--output-dir", str(tmp_path / "straight")])
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "splice.cli", *flags, "--output-dir", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoint-8" / LIVE_WEIGHTS).is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # in the second epoch, or still finishing the first checkpoint
    process.wait()
    assert not (out / "model.safetensors").exists()  # it really died before the end
    assert not (out / "checkpoint-16").exists()
    main([*flags, "--output-dir", str(out), "--resume"])
    difference = max_difference(final_weights(tmp_path / "straight"), final_weights(out))
    print(f"resume [SIGKILL, freeze none]: max |uninterrupted - resumed| = {difference:.3g}")
    assert difference <= 1e-6


def test_resume_with_a_mismatched_model_or_no_checkpoint_is_an_error(tmp_path):
    flags = [*BASE, "--n-train", "16", "--epochs", "1", "--freeze", "none"]
    with pytest.raises(ValueError, match="no checkpoint-N directory"):
        main([*flags, "--output-dir", str(tmp_path / "empty"), "--resume"])
    main([*flags, "--output-dir", str(tmp_path / "run")])
    with pytest.raises(CheckpointMismatchError, match="missing keys.*lora"):
        main([*flags, "--output-dir", str(tmp_path / "run"), "--resume", "--epochs", "2", "--lora-rank", "4"])
