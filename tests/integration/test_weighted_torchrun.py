"""`wmtp train verifiable` and `wmtp train rho1` on two torchrun ranks (FSDP2, gloo on CPU)
train exactly like one process holding the same global batch of 4 by accumulation.

Why this can fail: the ranks hold different rows with different numbers of target tokens,
so statistics computed per rank differ from the global batch's:

- Verifiable Critic: per-rank whitening would whiten each rank's advantages with that
  rank's mean/std; `adv_running_mean/std` (the mean of the ranks' values in metrics.jsonl)
  and every weight statistic would differ from the one process's;
- Rho-1: a per-rank top ⌈κ·N_r⌉ selects other targets than the global top ⌈κ·N⌉:
  `delta_selected_mean` and `delta_unselected_mean` change (and `selected_frac`, whenever
  Σ_r ⌈κ·N_r⌉ ≠ ⌈κ·N⌉), and so do the loss and the gradient of every step.

Checked by hand with `collectives.all_reduce` and `all_gather_1d` made rank-local: both
tests fail at step 1 (weight_min 0.3639 vs 0.3625, delta_selected_mean 0.0995 vs 0.1004).

Metrics are compared per step; the losses and gradient norms to float32 summation order;
the final parameters relative to the training update, bar the few elements AdamW moves by
rounding (see `assert_same_parameters`). The
critic and the reference (stage 1) are held to the same standard.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.helpers import checkpoint_model, invoke, wmtp_command

STEPS = 3
OPTIONS = [
    "--small", "--max-steps", str(STEPS),
    "--set", "batch_size=4", "--set", "micro_batch_size=1",  # 1 rank: 4 accumulation steps
    "--set", "eval_every=2", "--set", "eval_batches=2",
    "--set", "checkpoint_every=0", "--set", "warmup_ratio=0", "--set", "lr=1e-3",
]  # fmt: skip


@contextmanager
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def critic_run(weighted_storage, tmp_path_factory) -> Path:
    """A one-step `wmtp train critic` run (its values need not be good, only fixed)."""
    out = tmp_path_factory.mktemp("critic") / "critic"
    args = ["train", "critic", "--small", "--max-steps", "1", "--set", "batch_size=4"]
    with one_torch_thread():
        result = invoke(*args, "--out", str(out), root=weighted_storage.root)
    assert result.exit_code == 0, result.output
    return out


def one_and_two_ranks(root: Path, folder: Path, *args: str) -> tuple[Path, Path]:
    """The run on two torchrun ranks (a subprocess) and, meanwhile, in this process."""
    one, two = folder / "one-rank", folder / "two-ranks"
    log = folder / "torchrun.log"
    with log.open("w") as sink:
        ranks = subprocess.Popen(
            wmtp_command(*args, *OPTIONS, "--out", str(two), root=root, ranks=2),
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread per rank, as in here
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        with one_torch_thread():
            single = invoke(*args, *OPTIONS, "--out", str(one), root=root)
        code = ranks.wait(timeout=600)
    assert code == 0, log.read_text()[-3000:]
    assert single.exit_code == 0, single.output
    return one, two


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def assert_same_curves(one: Path, two: Path) -> None:
    """Per step: the same tokens, weight/selection statistics, loss and gradient norm."""
    a, b = records(one, "train"), records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["weights"].keys() == y["weights"].keys() and x["weights"]
        for key, value in x["weights"].items():
            # abs: Rho-1's Δ is a difference of two CEs of ~7 nats, each rounded to float32
            # (~4e-7) and computed by a policy that differs by rounding after step 1
            assert y["weights"][key] == pytest.approx(value, rel=1e-6, abs=1e-5), (x["step"], key)
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        # AdamW would hide a gradient scaled by the rank count, clipping would not
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    va, vb = records(one, "validation"), records(two, "validation")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [2, STEPS]
    for x, y in zip(va, vb, strict=True):
        assert y["per_head"] == pytest.approx(x["per_head"], rel=1e-5)


def policy_start(layout) -> dict[str, torch.Tensor]:
    """The policy's initial parameters: the micro-mtp asset, in float32 as trained."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(layout.model("micro-mtp").weights).items()}


LR = 1e-3  # OPTIONS' lr
# AdamW normalises each element's step (m / (sqrt(v) + eps), eps = 1e-8) to about lr whatever
# the gradient's size. An element whose summed gradient is within float32 rounding of zero
# or of eps (a sum of terms that cancel) therefore moves by an amount set by rounding: the
# two summation orders can move it differently by up to a few lr per step. Measured (pairwise
# critic, 3 steps): 1 such element among 1024 in one tensor (o_proj of layer 0, differing by
# 1.84e-6, 1.6e-4 of the tensor's update norm), every other element within 5.4e-7.
ROUNDING_SET = 1e-3  # at most this fraction of a tensor's elements, each within the bound:
ROUNDING_SET_BOUND = 2 * 2 * LR * STEPS  # both runs, each up to ~2 lr per step


def assert_same_parameters(
    one: Path, two: Path, initial: dict[str, torch.Tensor], scratch: Path
) -> None:
    """The final float32 parameters (DCP checkpoints) agree relative to the update.

    The runs sum the same gradients in another order (4 accumulated micro-batches vs 2 per
    rank and a reduce-scatter), ~1e-7 relative. A wrong, missing or doubled gradient moves a
    tensor by about its whole update, and one target selected or weighted differently out of
    ~1800 by ~1e-3 of it, so each tensor's difference must stay below 1e-4 of its update,
    once the few elements whose step AdamW made of rounding (`ROUNDING_SET`, each within
    `ROUNDING_SET_BOUND`) are set aside. Deterministic: the same two runs give the same
    bits whatever the machine's load (1 thread in this process, torchrun's 1 per rank).
    """
    step = f"step-{STEPS:08d}"
    final_one = checkpoint_model(one / "checkpoints" / step, scratch / "one.pt")
    final_two = checkpoint_model(two / "checkpoints" / step, scratch / "two.pt")
    assert final_one.keys() == final_two.keys() == initial.keys()
    for name in initial:
        update = (final_one[name] - initial[name]).norm()
        assert update > 0, name
        difference = (final_one[name] - final_two[name]).abs().flatten()
        rounding_set = difference.topk(int(ROUNDING_SET * difference.numel()))
        assert all(rounding_set.values <= ROUNDING_SET_BOUND), name
        difference[rounding_set.indices] = 0
        assert difference.norm() <= 1e-4 * update, name


def frozen_placement(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["frozen"]


def test_verifiable_on_two_ranks_trains_like_one(weighted_storage, critic_run, tmp_path):
    """The critic replicated on both ranks (`frozen.shard: auto`, far below its threshold)."""
    one, two = one_and_two_ranks(
        weighted_storage.root, tmp_path, "train", "verifiable", "--critic", str(critic_run)
    )
    assert_same_curves(one, two)
    assert records(one, "train")[-1]["weights"]["weight_std"] > 0  # the critic weighs
    assert_same_parameters(one, two, policy_start(weighted_storage), tmp_path)
    assert frozen_placement(one) == frozen_placement(two)
    assert frozen_placement(two)["dtype"] == "float32" and not frozen_placement(two)["sharded"]


def test_rho1_on_two_ranks_trains_like_one(weighted_storage, tmp_path):
    """The reference sharded with FSDP2 on the two ranks (`frozen.shard: always`)."""
    one, two = one_and_two_ranks(
        weighted_storage.root, tmp_path, "train", "rho1", "--reference", "micro-ref",
        "--set", "frozen.shard=always",
    )  # fmt: skip
    assert_same_curves(one, two)
    fractions = [r["weights"]["selected_frac"] for r in records(one, "train")]
    assert all(0.6 <= f < 0.61 for f in fractions)  # ⌈0.6·N⌉ / N
    assert_same_parameters(one, two, policy_start(weighted_storage), tmp_path)
    assert frozen_placement(two)["sharded"] and not frozen_placement(one)["sharded"]


def stage_one_start(run: Path, layout) -> dict[str, torch.Tensor]:
    """A stage-1 run's initial parameters, rebuilt as its builder made them (the seeded
    value head, the loaded reference)."""
    from weighted_mtp.train.config import read_run_config
    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.experiments import EXPERIMENTS

    config = read_run_config(run / "config.yaml")
    build = EXPERIMENTS[config.experiment].model.build
    model = build(layout.model(config.model), config, Dist(0, 1, torch.device("cpu")))
    return {k: v.detach().float() for k, v in model.core.state_dict().items()}


@pytest.mark.parametrize(
    "args",
    [("critic", "--objective", "pairwise"), ("ref-tune",)],
    ids=["pairwise-critic", "ref-tune"],
)
def test_stage_one_on_two_ranks_trains_like_one(weighted_storage, tmp_path, args):
    """The critic and the reference train data-parallel with FSDP2 like the policy: two
    ranks equal one process accumulating the same global batch. A pairwise critic's pairs
    span micro-batches (one record each) and ranks: every same-task pair of the global
    batch counts (`terms`), however it is split."""
    one, two = one_and_two_ranks(weighted_storage.root, tmp_path, "train", *args)
    log = (tmp_path / "torchrun.log").read_text()
    assert "UserWarning" not in log, log[-3000:]  # e.g. FSDP2: the model returned a view
    a, b = records(one, "train"), records(two, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b, strict=True):
        assert (x["tokens"], x["terms"]) == (y["tokens"], y["terms"]) and x["terms"] > 0
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    va, vb = records(one, "validation"), records(two, "validation")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [2, STEPS]
    for x, y in zip(va, vb, strict=True):
        assert x.keys() == y.keys()
        assert all(y[k] == pytest.approx(x[k], rel=1e-5) for k in x if k != "kind")
    assert_same_parameters(one, two, stage_one_start(one, weighted_storage), tmp_path)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (one, two)]
    assert [s["world"] for s in summaries] == [1, 2]
