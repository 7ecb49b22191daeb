"""The two weighted experiments as `Weighting`s for the one trainer.

Both see the whole global batch of a step at once (`weigh_step`: every micro-batch of this
rank, statistics all-reduced over ranks), so whitening statistics and Rho-1's top ⌈κ·N⌉
are those of the global batch, and 1 rank with accumulation selects exactly what N ranks
do. Micro-batches are joined row-wise (padded to the widest, padding never a target) in
(rank, micro-batch, row) order, which is the global batch's order for any split.

The frozen helper is placed at the first step (`frozen.place_frozen`: dtype, device, and
FSDP2 sharding or a replica by `FrozenConfig`); every rank scores the same number of
micro-batches, so a sharded helper's all-gathers pair up across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from weighted_mtp.train.advantages import AwrSettings, RunningWhitening, critic_token_weights
from weighted_mtp.train.critic import critic_values
from weighted_mtp.train.frozen import Placement, freeze, place_frozen
from weighted_mtp.train.rho1 import (
    Rho1Settings,
    excess_loss,
    policy_head0_cross_entropy,
    reference_cross_entropy,
    rho1_token_weights,
)
from weighted_mtp.train.weighted_config import FrozenConfig
from weighted_mtp.train.weighting import Normalize, WeighContext, Weights

if TYPE_CHECKING:
    from weighted_mtp.train.data import Batch


def join_rows(parts: list[Tensor]) -> Tensor:
    """`[B_i, S_i]` tensors stacked row-wise into `[ΣB_i, max S_i]`, right-padded with 0."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def split_rows(joined: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Undo `join_rows`: each part's rows, cut back to its width."""
    out, start = [], 0
    for part in like:
        rows, width = part.shape[:2]
        out.append(joined[start : start + rows, :width])
        start += rows
    return out


@dataclass
class VerifiableCritic:
    """w_t = clip(exp(Â_t/β), w_min, w_max) from a frozen critic's values (`advantages`).

    Normalised by the sum of weights per head, so the effective learning rate equals the
    Baseline's. The running whitening statistics are the weighting's checkpointed state.
    """

    critic: nn.Module
    settings: AwrSettings = field(default_factory=AwrSettings)
    name: str = "verifiable"
    normalize: Normalize = "weight"
    whitening: RunningWhitening = field(default_factory=RunningWhitening)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    placement: Placement | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        freeze(self.critic)
        self.whitening.momentum = self.settings.momentum

    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        if self.placement is None:
            self.placement = place_frozen(self.critic, self.frozen, ctx.device, ctx.policy_dtype)
        values = [critic_values(self.critic, b.tokens) for b in batches]  # [B_i, S_i] each
        masks = [b.loss_mask for b in batches]
        weights, metrics = critic_token_weights(
            join_rows(values),
            join_rows(masks),
            torch.cat([b.is_correct for b in batches]),
            self.settings,
            self.whitening,
        )
        return [Weights(w, metrics) for w in split_rows(weights, masks)]

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        return self.weigh_step([batch], ctx)[0]

    def state_dict(self) -> dict[str, Any]:
        return {"whitening": self.whitening.as_tensor()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.whitening.load_tensor(state["whitening"])


@dataclass
class Rho1:
    """Weight 1 on the top ⌈κ·N⌉ targets of the global batch by excess loss against a frozen
    reference, 0 elsewhere (`rho1`); normalised by the number selected."""

    reference: nn.Module
    settings: Rho1Settings = field(default_factory=Rho1Settings)
    name: str = "rho1"
    normalize: Normalize = "selected"
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    placement: Placement | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        freeze(self.reference)

    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        if self.placement is None:
            self.placement = place_frozen(self.reference, self.frozen, ctx.device, ctx.policy_dtype)
        deltas = [
            excess_loss(
                policy_head0_cross_entropy(ctx.model, b.tokens),
                reference_cross_entropy(self.reference, b.tokens),
                b.loss_mask,
            )
            for b in batches
        ]
        masks = [b.loss_mask for b in batches]
        weights, metrics = rho1_token_weights(join_rows(deltas), join_rows(masks), self.settings)
        return [Weights(w, metrics) for w in split_rows(weights, masks)]

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        return self.weigh_step([batch], ctx)[0]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the rho1 weighting has no state, got {sorted(state)}")
