"""Worker for test_checkpoint_ranks: `python checkpoint_ranks_worker.py RANK WORLD RENDEZVOUS
RUN OUT`.

One gloo rank of two: a small model sharded with FSDP2, so each rank writes its own DCP
file. It saves steps 1 and 2, then (after the test's main process has damaged step 2, which
it signals by creating `RUN/damaged`) asks `resume_point` which checkpoint to load, and
writes what it saw to OUT as JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.lora import TrainedModel


def sharded() -> TrainedModel:
    """Two linear layers, each sharded across the ranks."""
    torch.manual_seed(0)
    core = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Linear(64, 32))
    for layer in core:
        fully_shard(layer)
    fully_shard(core)
    return TrainedModel(core)


def main(rank: int, world: int, rendezvous: str, run: Path, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        here = Dist(rank, world, torch.device("cpu"))
        model = sharded()
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.1)
        for step in (1, 2):
            model.core(torch.randn(4, 32)).sum().backward()
            optimizer.step()
            state = ckpt.TrainerState(step, 2, step, 0.0, world)
            ckpt.save_checkpoint(run, state, model, optimizer, {}, here)
        here.barrier()
        if rank == 0:
            (run / "saved").touch()
        while not (run / "damaged").exists():
            time.sleep(0.05)
        chosen = ckpt.resume_point(run, here)
        out.write_text(json.dumps({"rank": rank, "chosen": str(chosen)}))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
