"""One process or `torchrun`: process group, device, precision, FSDP2 sharding.

Every stage trains data-parallel the same way: with more than one rank the trained model is
sharded with FSDP2 (`fully_shard` on every transformer block, then on the root), on CPU
(gloo) as on GPUs (NCCL, bf16 parameters with float32 gradient reductions). For the MTP
policy `trunk` and `head_logits` are registered as FSDP forward methods so the
sequential-head backward gathers and frees parameters like `forward` does. Blocks may first
be wrapped for activation checkpointing (`checkpoint_blocks`).

torchrun sets RANK (global), WORLD_SIZE and LOCAL_RANK: a rank's device is the GPU of its
LOCAL_RANK on its machine, and only global rank 0 writes the run folder, so `--nnodes N`
runs like `--nproc-per-node N` on one machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from weighted_mtp.errors import WmtpError

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from weighted_mtp.train.config import TrainConfig

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

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order (small things: validation results, checkpoint
        file hashes)."""
        if not self.sharded:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def on_main(dist_info: Dist, work: Callable[[], T]) -> T:
    """Run `work` on rank 0 and hand its result, or its WmtpError, to every rank (a choice
    every rank must share, like a run folder's name)."""
    outcome: tuple[T | None, str | None] = (None, None)
    if dist_info.is_main:
        try:
            outcome = (work(), None)
        except WmtpError as exc:
            outcome = (None, exc.line())
    result, error = dist_info.broadcast_object(outcome)
    if error is not None:
        raise WmtpError(error)
    return result  # type: ignore[return-value]  # set wherever no error was raised


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


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed() -> Iterator[Dist]:
    """This rank in torchrun's process group, joined if it is not yet (and then left at the
    end): a suite's stages all train in the one group its first stage joined."""
    joined = not dist.is_initialized()
    try:
        yield init_distributed()
    finally:
        if joined:
            close_distributed()


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the device supports it (precision auto|bf16), else float32."""
    if config.precision == "fp32":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    if config.precision == "bf16":
        raise WmtpError(
            f"precision bf16 is not supported on {device}", hint="use --set precision=auto"
        )
    return None


BLOCK_LISTS = ("layers", "extra_heads")  # ModuleLists of transformer blocks (Meta, HF)


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every `layers` / `extra_heads` ModuleList: the MTP trunk and heads, a
    transformers Llama's `model.layers`."""
    return [
        block
        for name, child in module.named_modules()
        if name.rpartition(".")[2] in BLOCK_LISTS and isinstance(child, nn.ModuleList)
        for block in child
    ]


def checkpoint_blocks(module: nn.Module) -> None:
    """Activation checkpointing per transformer block: each block keeps only its input
    through the forward and recomputes its activations in the backward (torch's
    non-reentrant `checkpoint_wrapper`, RNG state preserved so LoRA dropout replays the
    same mask). Applied before sharding, so FSDP2 gathers the block again for the
    recomputation. `state_dict()` names are unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, child in list(module.named_modules()):
        if name.rpartition(".")[2] in BLOCK_LISTS and isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                child[i] = checkpoint_wrapper(block)


def mixed_precision(low_precision: bool) -> MixedPrecisionPolicy:
    """bf16 parameters with float32 gradient reductions (GPUs), or float32 throughout."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if low_precision:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, low_precision: bool, *, reshard_root: bool | None = None) -> None:
    """FSDP2: each transformer block, then the root (embeddings, final norm, output, a value
    head). `reshard_root` frees the root's gathered parameters after its forward (a frozen
    helper: no backward follows); None keeps FSDP2's default. An MTP model's `trunk` and
    `head_logits` become FSDP forward methods, so the sequential-head backward gathers and
    frees parameters as `forward` does."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to shard")
    policy = mixed_precision(low_precision)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_root)
    for method in ("trunk", "head_logits"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)


def set_gradient_sync(model: nn.Module, enabled: bool, dist_info: Dist) -> None:
    """FSDP2's no_sync: gradients reduce across ranks on the last micro-step only."""
    if dist_info.sharded:
        model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
