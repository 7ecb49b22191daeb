"""Worker for test_weighting_ranks: `python weighting_ranks_worker.py RANK WORLD RENDEZVOUS OUT`.

With WORLD 1 it computes the joined batch in one process (no process group); with WORLD 2
it is one gloo rank holding its share of the rows."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from weighted_mtp.train.advantages import RunningWhitening, critic_token_weights
from weighted_mtp.train.config import CriticConfig
from weighted_mtp.train.rho1 import select_top_fraction, selection_statistics

STEPS = 12
SPLIT = 2  # rank 0 holds rows [0, 2), rank 1 rows [2, 7): unequal shares on purpose


def step_inputs(step: int):
    """One global batch: 7 rows of values, masks and outcomes, and Rho-1 scores with ties."""
    g = torch.Generator().manual_seed(step)
    rows, seqlen = 7, 16
    loss_mask = torch.zeros(rows, seqlen, dtype=torch.bool)
    for b in range(rows):
        start = int(torch.randint(1, 8, (), generator=g))
        loss_mask[b, start : int(torch.randint(start + 1, seqlen + 1, (), generator=g))] = True
    values = torch.rand(rows, seqlen, generator=g, dtype=torch.float64)
    is_correct = torch.rand(rows, generator=g) < 0.5
    scores = torch.randint(0, 5, (rows, seqlen), generator=g).float()  # many ties
    return values, loss_mask, is_correct, scores


def run_steps(rows: slice) -> dict[str, list]:
    """The weights, metrics and selections of `STEPS` steps for the rows this process holds."""
    whitening = RunningWhitening()
    out: dict[str, list] = {"weights": [], "metrics": [], "selected": [], "selection": []}
    for step in range(STEPS):
        values, loss_mask, is_correct, scores = (t[rows] for t in step_inputs(step))
        weights, metrics = critic_token_weights(
            values, loss_mask, is_correct, CriticConfig(), whitening
        )
        selected = select_top_fraction(scores, loss_mask, 0.35)
        out["weights"].append(weights)
        out["metrics"].append(metrics)
        out["selected"].append(selected)
        out["selection"].append(selection_statistics(scores, selected, loss_mask))
    out["whitening"] = [whitening.as_tensor()]
    return out


def main(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    if world == 1:
        torch.save(run_steps(slice(None)), out)
        return
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.save(run_steps(slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)), out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
