"""Global statistics across ranks: identity in one process, all-reduce under torch.distributed.

The weightings' per-token statistics (whitening mean/std, Rho-1's top fraction) must be the
statistics of the whole global batch, so every rank computes the same weights as one process
holding the joined batch would.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """A reduced copy of `tensor` (`sum`, `min` or `max` over ranks); the input is untouched."""
    out = tensor.detach().clone()
    if is_distributed():
        dist = torch.distributed
        reduce_op = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(out, op=reduce_op[op])
    return out


def all_gather_1d(tensor: Tensor) -> tuple[Tensor, int]:
    """Every rank's 1-D `tensor` joined in rank order, and where this rank's part starts.

    Ranks may hold different lengths: lengths are exchanged first and parts padded to the
    longest for the collective.
    """
    local = tensor.detach().reshape(-1)
    if not is_distributed():
        return local.clone(), 0
    dist = torch.distributed
    length = torch.tensor([local.numel()], dtype=torch.long, device=local.device)
    lengths = [torch.zeros_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    padded = torch.zeros(max(sizes), dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    joined = torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
    return joined, sum(sizes[: dist.get_rank()])
