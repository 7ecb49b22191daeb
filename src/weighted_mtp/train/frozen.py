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
- loading: a helper built on the meta device (`train.builders`) is cast and sharded there
  and only then read from its weights, each rank its own shard (`models.sharded_load`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from weighted_mtp.models.sharded_load import Weights, fresh_tensors, materialize
from weighted_mtp.train.collectives import is_distributed
from weighted_mtp.train.config import FrozenConfig
from weighted_mtp.train.distributed import shard

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


def shard_frozen(module: nn.Module) -> None:
    """FSDP2 on a frozen helper: each transformer block, then the root; every unit frees its
    gathered parameters after its forward (the root too: no backward will need them)."""
    shard(module, low_precision=False, reshard_root=True)


def frozen_structure(
    module: nn.Module, config: FrozenConfig, world: int, policy_dtype: torch.dtype | None
) -> Placement:
    """Cast `module` to its scoring dtype and shard it when the rule says so; where its
    tensors live (a device, or the meta device) does not change."""
    dtype = scoring_dtype(config.dtype, policy_dtype)
    mib = parameter_mib(module, dtype)
    sharded = shard_decision(config, mib, world)
    module.to(dtype=dtype)
    if sharded:
        shard_frozen(module)
    return Placement(dtype, mib, sharded)


def place_frozen(
    module: nn.Module,
    config: FrozenConfig,
    device: torch.device,
    policy_dtype: torch.dtype | None,
    weights: Weights | None = None,
) -> Placement:
    """Cast the (frozen) `module` to its scoring dtype, shard it when the rule says so, and
    put it on `device`. A module built on the meta device is loaded from `weights` only
    then, each rank reading its own shard; a built one is moved, then sharded."""
    world = torch.distributed.get_world_size() if is_distributed() else 1
    if weights is None:
        module.to(device=device)
        placement = frozen_structure(module, config, world, policy_dtype)
    else:
        fresh = fresh_tensors(module)
        placement = frozen_structure(module, config, world, policy_dtype)
        fresh = {name: t.to(placement.dtype) for name, t in fresh.items()}
        materialize(module, device, weights, fresh)
    freeze(module)
    return placement
