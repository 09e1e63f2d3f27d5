"""FSDP through accelerate (`configs/accelerate_fsdp.yaml`) on 2 CPU processes (gloo), slow: the per-step losses and
the final weights equal one process's with the same global batch, seed and data, and a checkpoint of the sharded run
resumes exactly (the standard of test_resume.py).

Tolerances: the sharded run computes the same float32 sums in another order (each process reduces its half batch,
gradients are averaged by reduce-scatter), so results agree to rounding, not bit for bit: measured |loss difference|
~1e-6 on losses ~3.5 and |weight difference| ~2e-7 after 4 steps. Losses must agree to 1e-5 relative and weights to
1e-5 absolute: well above the rounding, and well below what a step changes (the loss moves by more than 5e-3 a step,
two steps move the weights by more than 1e-4, both checked). Resuming the same sharded run repeats the same sums in the
same order: its weights must agree to 1e-6, as in test_resume.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import final_weights, max_difference
from tiny import cli_decoder, cli_encoder

from splice.cli import main

pytestmark = pytest.mark.slow  # three launches of two processes each

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate_fsdp.yaml"
# No dropout: its masks come from each process's random stream, which two processes draw differently from one.
DECODER = cli_decoder(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
FLAGS = ["train", "--encoder", json.dumps(cli_encoder()), "--decoder", json.dumps(DECODER), "--n-train", "16",
         "--n-eval", "4", "--image-size", "32", "--logging-steps", "1", "--epochs", "2",
         "--freeze", "none"]  # fmt: skip


def launch_fsdp(output_dir: Path, *extra: str) -> None:
    """`splice train` under `accelerate launch --config_file configs/accelerate_fsdp.yaml`: 2 processes of 4 samples
    a step each, 8 a step in all."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "-m", "splice.cli"]
    command += [*FLAGS, "--batch-size", "4", "--output-dir", str(output_dir), *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def logged_losses(directory: Path) -> dict[int, float]:
    """Step -> training loss, from the last checkpoint's trainer state."""
    state = json.loads((directory / "checkpoint-4" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def test_fsdp_on_two_cpu_processes_equals_one_process_and_its_checkpoint_resumes_exactly(tmp_path):
    launch_fsdp(tmp_path / "fsdp")
    # Sharded, not DDP (which accelerate alone falls back to on CPU): accelerate's FSDP checkpoint files.
    assert (tmp_path / "fsdp" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert not (tmp_path / "fsdp" / "checkpoint-2" / "optimizer.pt").exists()
    main([*FLAGS, "--batch-size", "8", "--output-dir", str(tmp_path / "one")])

    sharded, single = logged_losses(tmp_path / "fsdp"), logged_losses(tmp_path / "one")
    assert list(sharded) == list(single) == [1, 2, 3, 4]
    assert min(abs(single[s + 1] - single[s]) for s in (1, 2, 3)) > 5e-3  # a step moves the loss: the check can fail
    print(f"FSDP x2 vs 1 process, losses: {sharded} vs {single}")
    assert sharded == pytest.approx(single, rel=1e-5)
    two_steps = max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "one" / "checkpoint-2"))
    difference = max_difference(final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "one"))
    print(f"FSDP x2 vs 1 process: max |weight difference| = {difference:.3g} (steps 3-4 move them {two_steps:.3g})")
    assert two_steps > 1e-4
    assert difference <= 1e-5

    # The sharded run's first checkpoint, as a run killed after writing it leaves it, resumed under FSDP.
    shutil.copytree(tmp_path / "fsdp" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    launch_fsdp(tmp_path / "resumed", "--resume")
    resumed = max_difference(final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "resumed"))
    print(f"FSDP resume from checkpoint-2: max |uninterrupted - resumed| = {resumed:.3g}")
    assert resumed <= 1e-6
    assert logged_losses(tmp_path / "resumed") == pytest.approx(sharded, rel=1e-6)
