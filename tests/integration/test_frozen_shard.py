"""Two gloo ranks: a frozen critic / reference sharded with FSDP2 scores exactly like a full
replica, and a policy step leaves it untouched (no gradient, bit-identical parameters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("frozen_shard_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the two worker ranks saved."""
    folder = tmp_path_factory.mktemp("frozen-shard")
    outs = [folder / f"rank{rank}.pt" for rank in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), "2", str(folder / "rendezvous"), str(out)]
        )
        for rank, out in enumerate(outs)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    return [torch.load(out, weights_only=True) for out in outs]


def test_sharded_scoring_equals_the_replica_in_float64(ranks):
    for rank in ranks:
        exact = rank["exact"]
        # each rank holds about half of each helper (shards of dim 0, padded when uneven)
        assert exact["fraction"] < 2 * 0.6
        assert exact["resharded"], "the gathered parameters must be freed after the forward"
        for name in ("values", "ce", "logits"):
            sharded, replica = exact[name]
            torch.testing.assert_close(sharded, replica, rtol=1e-12, atol=1e-12, msg=name)
        assert exact["logits"][0].dtype == torch.float64
    # the two ranks scored different rows: a rank scoring its peer's rows would show here
    assert not torch.equal(ranks[0]["exact"]["ce"][0][:2], ranks[1]["exact"]["ce"][0][:2])


@pytest.mark.parametrize("name", ["verifiable", "rho1"])
def test_a_policy_step_never_touches_the_sharded_helper(ranks, name):
    for rank in ranks:
        step = rank["step"][name]
        assert step["placement"] == (True, "torch.float32")
        assert step["fraction"] < 0.6
        sharded, replica = step["weights"]
        torch.testing.assert_close(sharded, replica, rtol=1e-6, atol=1e-7)
        assert step["metrics"][0] == pytest.approx(step["metrics"][1], rel=1e-6)
        assert step["no_grad"] and step["unchanged"] and step["policy_moved"]
