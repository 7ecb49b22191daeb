"""One process or `torchrun --nproc-per-node N`: process group, device, FSDP2 sharding.

With more than one rank the policy is sharded with FSDP2 (`fully_shard` on every transformer
block, then on the root), on CPU (gloo) as on GPUs (NCCL, bf16 parameters with float32
gradient reductions). `trunk` and `head_logits` are registered as FSDP forward methods so
the sequential-head backward gathers and frees parameters like `forward` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import MtpTransformer

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; the identity on one process."""
        if self.sharded:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (a run folder name, an error)."""
        if not self.sharded:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _local_device() -> torch.device:
    """This rank's GPU (torchrun's LOCAL_RANK), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def init_distributed() -> Dist:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _local_device()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, dist.get_world_size() if dist.is_initialized() else 1, device)


def first_rank_alone() -> Dist | None:
    """For work one process does (stage 1) under torchrun: the first rank runs it without a
    process group and the other ranks get None at once. Nobody waits in a collective for
    the whole run, which NCCL's watchdog would abort after 10 minutes."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return Dist(0, 1, _local_device())


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def shard(model: MtpTransformer, low_precision: bool) -> None:
    """FSDP2: each block, then the root (embeddings, final norm, output)."""
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if low_precision
        else MixedPrecisionPolicy()
    )
    for block in [*model.layers, *model.extra_heads]:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for method in ("trunk", "head_logits"):
        register_fsdp_forward_method(model, method)


def set_gradient_sync(model: MtpTransformer, enabled: bool, dist_info: Dist) -> None:
    """FSDP2's no_sync: gradients reduce across ranks on the last micro-step only."""
    if dist_info.sharded:
        model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
