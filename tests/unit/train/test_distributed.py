"""`train.distributed`: one process group for a whole suite, rank 0's choices shared, and
activation checkpointing per block."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.sharded_load import CHECKPOINT_WRAPPER, state_name
from weighted_mtp.train.config import LoraConfig
from weighted_mtp.train.distributed import (
    Dist,
    checkpoint_blocks,
    distributed,
    on_main,
    transformer_blocks,
)
from weighted_mtp.train.lora import apply_lora
from weighted_mtp.train.losses import naive_backward, sequential_backward


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


def _grads_after_backward(model, backward, tokens, mask, scales) -> dict[str, torch.Tensor]:
    """Every gradient after one backward, by state_dict name (wrappers hidden)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(4)  # LoRA dropout's masks
    backward(model, tokens, mask, None, scales)
    return {
        state_name(n): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("backward", [sequential_backward, naive_backward])
def test_activation_checkpointing_keeps_every_gradient(make_model, tokens_and_mask, backward):
    """float64, LoRA with dropout: the checkpointed blocks recompute their forward in the
    backward, with the dropout masks replayed; every gradient equals the plain model's."""
    plain = apply_lora(make_model(), LoraConfig(enabled=True, r=4, alpha=8, dropout=0.3), seed=1)
    checkpointed = copy.deepcopy(plain)
    checkpoint_blocks(checkpointed.core)
    wrapped = [n for n, _ in checkpointed.core.named_modules() if n.endswith(CHECKPOINT_WRAPPER)]
    n_blocks = plain.core.params.n_layers
    assert len(wrapped) == len(transformer_blocks(plain.core)) == n_blocks
    assert list(checkpointed.core.state_dict()) == list(plain.core.state_dict())
    scales = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)
    expected = _grads_after_backward(plain.core, backward, *tokens_and_mask, scales)
    got = _grads_after_backward(checkpointed.core, backward, *tokens_and_mask, scales)
    assert list(got) == list(expected) and len(got) == 2 * 7 * n_blocks  # A and B per linear
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-12, atol=1e-15, msg=name)
