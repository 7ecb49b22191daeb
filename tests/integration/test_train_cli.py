"""`wmtp train` as a user runs it: one process, two torchrun ranks (FSDP2 on CPU with gloo),
resuming on another number of ranks, plotting, and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import checkpoint_model, run_wmtp

OPTIONS = [
    "--small",
    "--max-steps",
    "3",
    "--set",
    "batch_size=4",
    "--set",
    "micro_batch_size=1",
    "--set",
    "eval_every=2",
    "--set",
    "eval_batches=2",
    "--set",
    "checkpoint_every=1",
    "--set",
    "keep_checkpoints=5",
    "--set",
    "warmup_ratio=0",
    "--set",
    "lr=1e-3",
]


def wmtp(root: Path, *args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    return run_wmtp(*args, root=root, ranks=ranks)


def losses(run: Path) -> list[tuple[str, int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r["loss"]) for r in lines]


def grad_norms(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["grad_norm"] for r in lines if r["kind"] == "train"]


def initial_weights(layout) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = load_file(layout.model("micro-mtp").weights)
    return {name: tensor.float() for name, tensor in weights.items()}


def test_two_ranks_train_like_one_and_a_run_resumes_on_another_rank_count(train_storage, tmp_path):
    root = train_storage.root
    one, two = tmp_path / "one-rank", tmp_path / "two-ranks"
    single = wmtp(root, "train", "baseline", *OPTIONS, "--out", str(one))
    assert single.returncode == 0, single.stderr
    assert "run complete: 3 steps" in single.stdout

    # Two ranks, stopped after step 2 as an interruption would.
    sharded = wmtp(
        root, "train", "baseline", *OPTIONS, "--out", str(two), "--stop-at", "2", ranks=2
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "stopped after step 2" in sharded.stdout
    a, b = losses(one), losses(two)
    assert [x[:2] for x in b] == [("train", 1), ("train", 2), ("validation", 2)]
    for x, y in zip(a, b, strict=False):
        assert x[:2] == y[:2] and x[2] == pytest.approx(y[2], rel=1e-5)
    # Same gradients, not only the same loss: AdamW would hide a gradient scaled by the rank
    # count, clipping would not.
    assert grad_norms(two) == pytest.approx(grad_norms(one)[:2], rel=1e-4)

    # ... resumed on one rank: the DCP checkpoint reshards.
    resumed = wmtp(root, "train", "baseline", *OPTIONS, "--out", str(two), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)  # one JSON object and nothing else
    assert (record["run"], record["completed"], record["steps"]) == (str(two), True, 3)
    assert (
        record["final_validation"]
        == json.loads((two / "summary.json").read_text())["final_validation"]
    )
    assert [x[:2] for x in losses(two)] == [x[:2] for x in a]
    for x, y in zip(a, losses(two), strict=True):
        assert x[2] == pytest.approx(y[2], rel=1e-5)
    final_one = checkpoint_model(one / "checkpoints" / "step-00000003", tmp_path / "a.pt")
    final_two = checkpoint_model(two / "checkpoints" / "step-00000003", tmp_path / "b.pt")
    initial = initial_weights(train_storage)
    assert final_one.keys() == final_two.keys() == initial.keys()
    for name in final_one:
        # Summation order differs between 1 and 2 ranks; AdamW turns tiny differences of
        # near-zero gradients into visible ones for a few elements, so compare the change
        # against the training update (a missing or doubled gradient is as large as it).
        update = (final_one[name] - initial[name]).norm()
        assert (final_one[name] - final_two[name]).norm() <= 0.05 * update, name
    assert json.loads((two / "summary.json").read_text())["steps"] == 3

    figure = tmp_path / "curves.png"
    plotted = wmtp(root, "train", "plot", str(one), str(two), "--out", str(figure))
    assert plotted.returncode == 0, plotted.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("foo=1", "unknown config key 'foo'"),
        ("lr=fast", "config key 'lr' wants float, got 'fast'"),
        ("lr=nan", "config key 'lr' must be a finite number, not 'nan'"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, option, message):
    out = wmtp(tmp_path, "train", "baseline", "--small", "--set", option)
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
