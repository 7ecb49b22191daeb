"""Two gloo ranks build the policy, a critic and a frozen reference on the meta device,
shard them with FSDP2 and load them rank by rank: every parameter equals the eager load,
each rank holds about half, the logits and the policy's gradients (activation
checkpointing on) are the eager model's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import LOADING_POLICY, LOADING_REFERENCE
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams
from weighted_mtp.synthetic.model_mirrors import write_model_folder

WORKER = Path(__file__).with_name("sharded_load_worker.py")
POLICY = MetaParams.from_dict(LOADING_POLICY)
REFERENCE = HfLlamaConfig.from_dict(LOADING_REFERENCE)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("sharded-load")
    mtp = write_model_folder(folder / "mtp", POLICY)  # 61 rows: uneven shards (31 + 30)
    ref = write_model_folder(folder / "ref", REFERENCE)
    outs = [folder / f"rank{rank}.pt" for rank in range(2)]
    args = [str(folder / "rendezvous"), str(mtp.root), str(ref.root)]
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", *args, str(out)])
        for rank, out in enumerate(outs)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    return [torch.load(out, weights_only=True) for out in outs]


def assert_equal(pair: tuple[dict, dict]) -> None:
    built, eager = pair
    assert list(built) == list(eager)
    for name in built:
        assert torch.equal(built[name], eager[name]), name


def test_every_rank_loads_its_shard_of_the_eager_policy(ranks):
    for rank in ranks:
        policy = rank["policy"]
        assert policy["sharded"] and policy["fraction"] < 0.55
        assert_equal(policy["parameters"])  # base weights and the seeded adapters
        torch.testing.assert_close(*policy["logits"], rtol=0, atol=0)
        grads, eager = policy["grads"]
        assert list(grads) == list(eager) and grads
        for name in grads:
            torch.testing.assert_close(grads[name], eager[name], rtol=1e-5, atol=1e-7)


def test_a_critic_to_train_and_a_frozen_reference_load_sharded(ranks):
    for rank in ranks:
        assert rank["critic"]["fraction"] < 0.6
        assert_equal(rank["critic"]["parameters"])  # backbone, adapters, value head
        reference = rank["reference"]
        assert reference["sharded"] and reference["fraction"] < 0.6
        torch.testing.assert_close(*reference["logits"], rtol=0, atol=0)
