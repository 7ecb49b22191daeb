"""`train.distributed`: how one-process work (stage 1) runs under torchrun."""

from __future__ import annotations

import torch.distributed as dist

from weighted_mtp.train.distributed import first_rank_alone


def test_the_first_rank_works_alone_without_a_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    alone = first_rank_alone()
    assert alone is not None and (alone.rank, alone.world) == (0, 1) and not alone.sharded
    assert not dist.is_initialized()  # nothing to wait in


def test_the_other_ranks_end_at_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert first_rank_alone() is None
    assert not dist.is_initialized()
