"""FSDP through accelerate (`configs/accelerate_fsdp.yaml`) on 2 CPU processes (gloo), slow: the per-step losses and
the final weights equal one process's with the same global batch, seed and data, and a checkpoint of the sharded run
resumes exactly (the standard of test_resume.py). The README's multi-machine commands (accelerate FSDP, torchrun DDP)
run as two "machines" of one process each on loopback and give the same weights. FSDP1 is refused (fast).

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
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.utils import FullyShardedDataParallelPlugin
from test_resume import final_weights, max_difference
from tiny import cli_decoder, cli_encoder

from splice.cli import main
from splice.training.config import ConfigError
from splice.training.fsdp import require_fsdp2

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate_fsdp.yaml"
# No dropout: its masks come from each process's random stream, which two processes draw differently from one.
DECODER = cli_decoder(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
FLAGS = ["train", "--encoder", json.dumps(cli_encoder()), "--decoder", json.dumps(DECODER), "--n-train", "16",
         "--n-eval", "4", "--image-size", "32", "--logging-steps", "1", "--epochs", "2",
         "--freeze", "none"]  # fmt: skip


def launch(launcher: list[str], output_dir: Path, *extra: str, log: str = "launch") -> tuple[subprocess.Popen, Path]:
    """`splice train` under a launcher command, 4 samples a step in each process (8 a step in all on 2 processes);
    its stderr goes to a file (a pipe left unread could fill and stall the process group)."""
    command = [sys.executable, "-m", *launcher, "-m", "splice.cli"]
    command += [*FLAGS, "--batch-size", "4", "--output-dir", str(output_dir), *extra]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    stderr = output_dir.parent / f"{output_dir.name}-{log}.log"
    with open(stderr, "w") as file:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=file, env=env), stderr


def succeeded(*launched: tuple[subprocess.Popen, Path]) -> None:
    for process, stderr in launched:
        assert process.wait(timeout=900) == 0, stderr.read_text()[-3000:]


def launch_fsdp(output_dir: Path, *extra: str) -> None:
    """Under `accelerate launch --config_file configs/accelerate_fsdp.yaml` (2 processes), to the end."""
    succeeded(launch(["accelerate.commands.launch", "--config_file", str(CONFIG)], output_dir, *extra))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The same run in one process, 8 samples a step."""
    output_dir = tmp_path_factory.mktemp("one")
    main([*FLAGS, "--batch-size", "8", "--output-dir", str(output_dir)])
    return output_dir


def logged_losses(directory: Path) -> dict[int, float]:
    """Step -> training loss, from the last checkpoint's trainer state."""
    state = json.loads((directory / "checkpoint-4" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def assert_sharded(output_dir: Path) -> None:
    """Sharded, not DDP (which accelerate alone falls back to on CPU): accelerate's FSDP checkpoint files."""
    assert (output_dir / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert not (output_dir / "checkpoint-2" / "optimizer.pt").exists()


@pytest.mark.slow  # launches of two processes each (`-m slow`, .ci/run's own step)
def test_fsdp_on_two_cpu_processes_equals_one_process_and_its_checkpoint_resumes_exactly(tmp_path, one_process):
    launch_fsdp(tmp_path / "fsdp")
    assert_sharded(tmp_path / "fsdp")
    sharded, single = logged_losses(tmp_path / "fsdp"), logged_losses(one_process)
    assert list(sharded) == list(single) == [1, 2, 3, 4]
    assert min(abs(single[s + 1] - single[s]) for s in (1, 2, 3)) > 5e-3  # a step moves the loss: the check can fail
    print(f"FSDP x2 vs 1 process, losses: {sharded} vs {single}")
    assert sharded == pytest.approx(single, rel=1e-5)
    two_steps = max_difference(final_weights(one_process), final_weights(one_process / "checkpoint-2"))
    difference = max_difference(final_weights(tmp_path / "fsdp"), final_weights(one_process))
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["accelerate-fsdp", "torchrun-ddp"])
def test_two_machines_on_loopback_equal_one_process(tmp_path, one_process, engine):
    def machine(rank: int, port: int) -> list[str]:  # the README's commands, one process a machine
        if engine == "torchrun-ddp":
            return ["torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                    "--master_addr", "127.0.0.1", "--master_port", str(port)]  # fmt: skip
        return ["accelerate.commands.launch", "--config_file", str(CONFIG), "--num_machines", "2",
                "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                "--main_process_port", str(port)]  # fmt: skip

    port = free_port()
    succeeded(*[launch(machine(rank, port), tmp_path / "run", log=f"machine{rank}") for rank in (0, 1)])
    if engine == "accelerate-fsdp":
        assert_sharded(tmp_path / "run")
    difference = max_difference(final_weights(tmp_path / "run"), final_weights(one_process))
    print(f"{engine}, 2 machines on loopback vs 1 process: max |weight difference| = {difference:.3g}")
    assert difference <= 1e-5  # the tolerance of the test above, for the same reason


def test_fsdp1_is_refused_naming_the_setting_and_the_fix():
    require_fsdp2(FullyShardedDataParallelPlugin(fsdp_version=2))
    with pytest.raises(ConfigError, match=r"fsdp_version=1: splice trains with FSDP2 only; set fsdp_version: 2"):
        require_fsdp2(FullyShardedDataParallelPlugin(fsdp_version=1))
