"""Training across ranks as a cluster runs it: two machines (two torchrun launches joined by
a c10d rendezvous) train exactly like two ranks on one, and the whole suite trains every
stage on every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import checkpoint_model, run_wmtp

STEPS = 2
OPTIONS = [
    "train", "baseline", "--small", "--max-steps", str(STEPS),
    "--set", "batch_size=4", "--set", "micro_batch_size=1", "--set", "eval_every=1",
    "--set", "eval_batches=2", "--set", "checkpoint_every=0", "--set", "lr=1e-3",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


def node_command(root: Path, out: Path, port: int) -> list[str]:
    """One machine of two, one rank each: torchrun's multi-node launch."""
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "wmtp",
    ]  # fmt: skip
    return [*launcher, "-m", "weighted_mtp", "--root", str(root), *OPTIONS, "--out", str(out)]


def lines(run: Path) -> list[dict]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_two_machines_train_exactly_like_two_ranks_on_one(train_storage, tmp_path):
    root = train_storage.root
    one_machine, two_machines = tmp_path / "one-machine", tmp_path / "two-machines"
    port = free_port()
    nodes = [
        subprocess.Popen(
            node_command(root, two_machines, port),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    local = run_wmtp(*OPTIONS, "--out", str(one_machine), root=root, ranks=2)
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert local.returncode == 0, local.stderr[-3000:]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    # Only global rank 0 writes and prints: each line once, one report in all.
    assert lines(two_machines) == lines(one_machine)
    assert [r["step"] for r in lines(two_machines) if r["kind"] == "train"] == [1, 2]
    reports = [out for out, _ in outputs if "run complete" in out]
    assert len(reports) == 1 and reports[0].count("run complete") == 1
    step = f"step-{STEPS:08d}"
    a = checkpoint_model(one_machine / "checkpoints" / step, tmp_path / "a.pt")
    b = checkpoint_model(two_machines / "checkpoints" / step, tmp_path / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((two_machines / "summary.json").read_text())
    assert summary["world"] == 2


def test_the_suite_trains_every_stage_on_every_rank(weighted_storage, tmp_path):
    out = tmp_path / "suite"
    result = run_wmtp(
        "train", "suite", "--small", "--max-steps", "1", "--set", "eval_batches=2",
        "--out", str(out), root=weighted_storage.root, ranks=2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("comparison:") == 1
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison["stages"]) == ["baseline", "critic", "verifiable", "ref-tune", "rho1"]
    for stage in comparison["stages"]:
        summary = json.loads((out / stage / "summary.json").read_text())
        # Both ranks trained it: a rank that sat the stage out would have left the other
        # waiting in its first collective.
        assert summary["world"] == 2 and summary["steps"] == 1, stage
