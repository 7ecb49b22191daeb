"""Two gloo ranks give the weighting statistics of one process holding the joined batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("weighting_ranks_worker.py")
STEPS = 12


def test_two_gloo_ranks_equal_one_process_on_the_joined_batch(tmp_path):
    rendezvous = tmp_path / "rendezvous"
    jobs = [(0, 2), (1, 2), (0, 1)]  # two ranks, then one process on the joined batch
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(rank),
                str(world),
                str(rendezvous),
                str(tmp_path / f"rank{rank}-of-{world}.pt"),
            ]
        )
        for rank, world in jobs
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    ranks = [load("rank0-of-2.pt"), load("rank1-of-2.pt")]
    single = load("rank0-of-1.pt")
    assert torch.equal(ranks[0]["whitening"][0], ranks[1]["whitening"][0])
    torch.testing.assert_close(
        ranks[0]["whitening"][0], single["whitening"][0], rtol=1e-12, atol=1e-12
    )
    for step in range(STEPS):
        joined = torch.cat([ranks[0]["weights"][step], ranks[1]["weights"][step]])
        torch.testing.assert_close(joined, single["weights"][step], rtol=1e-6, atol=1e-7)
        selected = torch.cat([ranks[0]["selected"][step], ranks[1]["selected"][step]])
        assert torch.equal(selected, single["selected"][step])
        for rank in ranks:
            for name in ("metrics", "selection"):
                expected = single[name][step]
                assert rank[name][step].keys() == expected.keys()
                for key, value in expected.items():
                    assert abs(rank[name][step][key] - value) < 1e-9, (name, key)
