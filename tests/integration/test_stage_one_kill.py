"""A stage-1 run (`wmtp train critic`) killed with SIGKILL mid-run resumes from its last
checkpoint and ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 5
OPTIONS = [
    "train", "critic", "--small", "--max-steps", str(STEPS),
    "--set", "batch_size=4", "--set", "micro_batch_size=2", "--set", "eval_every=0",
    "--set", "eval_batches=1", "--set", "checkpoint_every=1", "--set", "keep_checkpoints=2",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "weighted_mtp", "--root", str(root), *OPTIONS, "--out", str(out)]


def train_lines(run: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if r["kind"] == "train"]


def kill_after_checkpoint(cmd: list[str], checkpoint: Path) -> int:
    """Start `cmd`, SIGKILL it as soon as `checkpoint` is complete; its return code."""
    child = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (checkpoint / "trainer_state.json").is_file():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"no checkpoint {checkpoint.name}: {child.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    return child.wait()


def test_a_killed_critic_run_resumes_to_the_uninterrupted_result(weighted_storage, tmp_path):
    from safetensors.torch import load_file

    root = weighted_storage.root
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(command(root, whole), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    code = kill_after_checkpoint(command(root, killed), killed / "checkpoints" / "step-00000002")
    assert code == -signal.SIGKILL
    assert not (killed / "summary.json").exists() and not (killed / "final").exists()

    resumed = subprocess.run(
        [*command(root, killed), "--resume"], env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"critic run complete: {STEPS} steps" in resumed.stdout
    assert train_lines(killed) == train_lines(whole)
    a = load_file(whole / "final" / "critic.safetensors")
    b = load_file(killed / "final" / "critic.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == sorted(
        p.name for p in (whole / "checkpoints").iterdir()
    )
