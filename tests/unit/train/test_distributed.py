"""`train.distributed`: one process group for a whole suite, and rank 0's choices shared."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from weighted_mtp.errors import WmtpError
from weighted_mtp.train.distributed import Dist, distributed, on_main


def test_one_process_trains_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed() as single:
        assert (single.rank, single.world) == (0, 1) and not single.sharded
        assert not dist.is_initialized()


def test_a_group_already_joined_is_kept(monkeypatch, tmp_path):
    """The suite joins the group once; each stage's `distributed()` leaves it joined."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "1")
        with distributed():
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_rank_zero_decides_and_its_error_is_everyones():
    single = Dist(0, 1, torch.device("cpu"))
    assert on_main(single, lambda: 7) == 7

    def refuse() -> int:
        raise WmtpError("no room")

    with pytest.raises(WmtpError, match="no room"):
        on_main(single, refuse)
