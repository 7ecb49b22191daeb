"""`wmtp train plan` against the memory real training steps take, on the micro models on CPU.

The measured peak of a case is the largest number of bytes held at once by live tensor
storages during two real `Trainer.train_step`s of the one trainer on rank 0 (`TensorMemory`
around them; `test_tensor_memory` checks that count against torch's profiler): the trained
model's (policy, critic or reference) and the frozen helper's tensors and everything the
steps allocate, with full-length micro-batches (what the plan assumes). The plan traces the
same configuration with fake tensors and a fake process group; its total must be within 15%
of the measured peak, on 1 and 2 ranks: Baseline, Rho-1, the critic and ref-tune.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli_error, invoke
from tests.integration.memory_plan_worker import micro_config
from weighted_mtp.assets import MICRO_REF
from weighted_mtp.train.memory_plan import alternatives, plan_memory

WORKER = Path(__file__).with_name("memory_plan_worker.py")
SHAPE = {"seq_len": 512, "batch_size": 4, "micro_batch_size": 2}
CASES = {
    1: {
        "baseline": ("baseline", SHAPE),
        "rho1": ("rho1", {**SHAPE, "rho1.reference": MICRO_REF}),
        "critic": ("critic", SHAPE),
        "ref-tune": ("ref-tune", SHAPE),
    },
    2: {
        "baseline-checkpointed": ("baseline", {**SHAPE, "activation_checkpointing": "blocks"}),
        "rho1-lora-sharded": (
            "rho1",
            {**SHAPE, "rho1.reference": MICRO_REF, "lora.enabled": True, "frozen.shard": "always"},
        ),
        "critic-pairwise-lora": (
            "critic",
            {**SHAPE, "critic.objective": "pairwise", "lora.enabled": True},
        ),
        "ref-tune-checkpointed": ("ref-tune", {**SHAPE, "activation_checkpointing": "blocks"}),
    },
}
TOLERANCE = 0.15
STAGE_ONE = ("critic", "ref-tune")


def measure(storage: Path, world: int, folder: Path) -> dict:
    """Rank 0's measured peaks of the cases, from `world` worker processes."""
    cases = json.dumps(CASES[world])
    outs = [folder / f"rank{rank}-of-{world}.json" for rank in range(world)]
    rendezvous = str(folder / f"rendezvous-{world}")
    argv = [sys.executable, str(WORKER)]
    procs = [
        subprocess.Popen([*argv, str(rank), str(world), rendezvous, str(storage), cases, str(out)])
        for rank, out in enumerate(outs)
    ]
    for proc in procs:
        assert proc.wait(timeout=600) == 0
    return json.loads(outs[0].read_text())


@pytest.mark.parametrize("world", [1, 2])
def test_the_plan_is_within_15_percent_of_the_measured_peak(weighted_storage, tmp_path, world):
    measured = measure(weighted_storage.root, world, tmp_path)
    for name, (experiment, overrides) in CASES[world].items():
        config = micro_config(experiment, overrides)
        plan = plan_memory(weighted_storage, config, ranks=world, device="cpu")
        real = measured[name]["peak"]
        print(name, world, plan.peak, real, plan.peak / real, plan.split, measured[name]["split"])
        assert abs(plan.peak - real) <= TOLERANCE * real, (name, plan.split, measured[name])
        assert sum(plan.split.values()) == plan.peak
        if experiment == "rho1":
            assert plan.split["frozen helper"] > 0 and plan.placement is not None
        if experiment in STAGE_ONE:  # no frozen helper; a critic has no vocabulary logits
            assert plan.models.helper is None and "frozen helper" not in plan.split
            assert ("logits" in plan.split) == (experiment == "ref-tune")
            assert ("value head" in plan.split) == (experiment == "critic")


def test_the_7b_plan_needs_no_weights_and_gives_a_verdict(tmp_path):
    """8 ranks of 80 GiB, LoRA, from the published architectures alone: an empty root."""
    result = invoke(
        "train", "plan", "baseline", "--ranks", "8", "--device-memory", "80", "--json",
        root=tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["model"] == "meta-llama-mtp" and record["settings"]["lora"] is True
    per_rank = record["per_rank_gib"]
    assert set(per_rank) == {
        "parameters", "gradients", "optimizer state", "activations", "logits",
        "frozen helper", "total",
    }  # fmt: skip
    # 6.74 B parameters in float32 over 8 ranks: 3.1 GiB of shards per rank, plus gathering
    assert 3.1 < per_rank["parameters"] < 8 and per_rank["frozen helper"] == 0
    assert per_rank["total"] == pytest.approx(
        sum(v for k, v in per_rank.items() if k != "total"), abs=0.05
    )
    assert record["fits"] is True and record["budget_gib"] == 72.0


def test_a_plan_that_does_not_fit_says_what_to_change(weighted_storage):
    config = micro_config("baseline", {**SHAPE, "micro_batch_size": 4})
    tight = plan_memory(weighted_storage, config, ranks=1, device="cpu", device_gib=0.02)
    assert tight.fits is False and tight.suggestions
    changes = {s.change: s for s in tight.suggestions}
    assert set(changes) >= {"--set activation_checkpointing=blocks", "--set micro_batch_size=2"}
    assert all(s.peak < tight.peak for s in tight.suggestions)


def test_a_critic_plan_splits_by_what_a_critic_holds(weighted_storage):
    """`wmtp train plan critic`: the value model on the reference, no frozen helper, its
    value head's tensors where a policy has vocabulary logits; no change to suggest for a
    frozen helper it does not have."""
    result = invoke(
        "train", "plan", "critic", "--small", "--set", "seq_len=256", "--device", "cpu",
        "--json", root=weighted_storage.root,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["model"] == MICRO_REF and record["helper"] is None
    assert set(record["per_rank_bytes"]) == {
        "parameters", "gradients", "optimizer state", "activations", "value head", "total",
    }  # fmt: skip
    assert record["settings"]["critic.objective"] == "mc" and record["frozen"] is None
    config = micro_config("critic", SHAPE)
    changes = [change for change, _, _ in alternatives(config, 2, helper=False)]
    assert "--set activation_checkpointing=blocks" in changes
    assert not any("frozen" in change for change in changes)


def test_an_unknown_experiment_is_one_clear_line(weighted_storage):
    error = cli_error("train", "plan", "critics", "--small", root=weighted_storage.root)
    assert "unknown experiment 'critics'" in error.line()
