"""Frozen helper models (the critic, the Rho-1 reference): eval mode, no gradient, ever.

Placement, once, at the first scoring pass (when the device and the process group exist):

- dtype (`FrozenConfig.dtype`): `auto` is the policy's compute dtype, so a bf16-autocast
  policy on a GPU scores against a bf16 helper and an fp32 run against an fp32 one;
  `bf16`/`fp32` force one. Whatever the helper's dtype, what leaves it is float32: critic
  values (`critic_values`) and cross-entropies (`rho1.target_cross_entropy`) are computed
  from logits upcast to float32, so Rho-1's Δ never mixes a bf16 CE with a float32 one.
- sharding (`FrozenConfig.shard`): under torchrun a helper is either replicated on every
  rank or sharded with FSDP2 like the policy (`fully_shard` per transformer block, then the
  root), all of it resharded after every forward since no backward follows. It has no
  optimizer and no gradient; sharding changes where its parameters live, not its values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from weighted_mtp.train.collectives import is_distributed
from weighted_mtp.train.config import FrozenConfig

MIB = 2**20
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and `requires_grad=False` on every parameter; returns `module`."""
    module.eval()
    module.requires_grad_(False)
    return module


@contextmanager
def scoring_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradient; every submodule's mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


@dataclass(frozen=True)
class Placement:
    """Where a frozen helper ended up: its dtype, its size in it, and whether it is sharded."""

    dtype: torch.dtype
    mib: float
    sharded: bool

    def as_record(self) -> dict[str, object]:
        """For summary.json: `{"dtype": "bfloat16", "mib": 5148.2, "sharded": true}`."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "mib": round(self.mib, 3),
            "sharded": self.sharded,
        }


def scoring_dtype(choice: str, policy_dtype: torch.dtype | None) -> torch.dtype:
    """The helper's dtype: forced by `choice`, or (`auto`) the policy's compute dtype
    (`policy_dtype`, None when the policy runs in float32)."""
    if choice == "auto":
        return policy_dtype or torch.float32
    return DTYPES[choice]


def parameter_mib(module: nn.Module, dtype: torch.dtype) -> float:
    """The module's parameters' size in MiB once held in `dtype`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in module.parameters()) * itemsize / MIB


def shard_decision(config: FrozenConfig, mib: float, world: int) -> bool:
    """Shard (True) or replicate: one process never shards; `auto` shards above
    `shard_min_mib`."""
    if world <= 1 or config.shard == "never":
        return False
    return config.shard == "always" or mib > config.shard_min_mib


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every `layers` ModuleList (transformers' Llama: `model.layers`)."""
    return [
        block
        for name, child in module.named_modules()
        if name.rpartition(".")[2] == "layers" and isinstance(child, nn.ModuleList)
        for block in child
    ]


def shard_frozen(module: nn.Module) -> None:
    """FSDP2 on a frozen helper: each transformer block, then the root; every unit frees its
    gathered parameters after its forward (the root too: no backward will need them)."""
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(module)
    if not blocks:
        raise ValueError(f"{type(module).__name__} has no transformer blocks to shard")
    for block in blocks:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(module, reshard_after_forward=True)


def place_frozen(
    module: nn.Module,
    config: FrozenConfig,
    device: torch.device,
    policy_dtype: torch.dtype | None,
) -> Placement:
    """Cast and move the (already frozen) `module` to `device`, then shard it when the rule
    says so."""
    dtype = scoring_dtype(config.dtype, policy_dtype)
    module.to(device=device, dtype=dtype)
    world = torch.distributed.get_world_size() if is_distributed() else 1
    mib = parameter_mib(module, dtype)
    sharded = shard_decision(config, mib, world)
    if sharded:
        shard_frozen(module)
    return Placement(dtype, mib, sharded)
