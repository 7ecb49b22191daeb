"""The weighted experiments' sections of a run's configuration (`critic:` and `rho1:` in
config.yaml, `--set critic.beta=0.5`). Their meaning is checked where they are used, by
`AwrSettings` and `Rho1Settings`, before a run folder is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CriticConfig:
    """Stage 1 (`wmtp train critic`): objective and value-head width. Stage 2 (`wmtp train
    verifiable`): the critic run and the advantage/weight hyperparameters."""

    run: str = ""  # the critic's run folder (stage 2)
    objective: Literal["mc", "pairwise"] = "mc"
    head_hidden: int = 256
    gamma: float = 1.0
    lam: float = 0.95
    beta: float = 1.0
    w_min: float = 0.1
    w_max: float = 3.0
    momentum: float = 0.1  # whitening EMA; the first 1/momentum updates average


@dataclass(frozen=True)
class Rho1Config:
    """Stage 2 (`wmtp train rho1`): the reference (a ref-tune run folder or a model) and the
    selection."""

    reference: str = ""
    kappa: float = 0.6
    score: Literal["signed", "absolute"] = "signed"


@dataclass(frozen=True)
class FrozenConfig:
    """Stage 2: how each rank holds the frozen critic / reference (`frozen:` in config.yaml).

    `shard`: under torchrun, `always` shards it with FSDP2 like the policy (per block, then
    the root), `never` keeps a full replica on every rank, and `auto` shards when its
    parameters in the scoring dtype exceed `shard_min_mib` (a replica that small costs less
    memory than its per-step all-gathers cost time). One process never shards.
    `dtype`: `auto` scores in the policy's compute dtype (bf16 where the trainer autocasts to
    bf16, float32 otherwise); `bf16` or `fp32` force one.
    """

    shard: Literal["auto", "always", "never"] = "auto"
    shard_min_mib: float = 1024.0
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
