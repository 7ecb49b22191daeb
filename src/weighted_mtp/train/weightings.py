"""Per-token weights: what distinguishes the three policy experiments.

The MTP objective calls a `Weighting` with every micro-batch of a step before it computes
any gradient of that step, and scales each target's cross-entropy by the returned weight:

- `Weights.values` is None (uniform: every target weighs 1) or a detached float tensor
  `[batch, seq]` aligned with target TOKEN positions (`values[b, t]` weighs the loss of
  predicting `tokens[b, t]`, for every head k from position t - k - 1), or `[batch, seq,
  heads]` aligned with the logits (head k at position t, predicting token t + k + 1), exactly
  as `weighted_mtp.models.adapter.mtp_loss` documents.
- `Weighting.normalize` says what each head's weighted sum is divided by (`losses.NORMALIZE`):
  `count` (valid targets), `weight` (sum of their weights) or `selected` (valid targets with
  a non-zero weight). The normaliser is global: summed over the step's micro-batches and
  all ranks before dividing, so one rank and N ranks compute the same gradients.
- `Weights.metrics` are floats for metrics.jsonl (averaged over the step's micro-batches
  and ranks); statistics that must be exact over the global batch (whitening mean/std,
  a top-k over all tokens) use `WeighContext.all_reduce_sum`.

A weighting with state (a trained critic) returns it from `state_dict` so checkpoints carry
it; a stateless one returns `{}`.

A `StepWeighting` also has `weigh_step`, and is handed all micro-batches of a step in one
call: its statistics span the global batch however it is split into micro-batches and ranks
(Rho-1's top fraction, the critic's whitening). Micro-batches are joined row-wise (padded to
the widest, padding never a target) in (rank, micro-batch, row) order, which is the global
batch's order for any split.

The weighted experiments' frozen helper (the critic, the Rho-1 reference) is placed at the
first step (`frozen.place_frozen`: dtype, device, and FSDP2 sharding or a replica by
`FrozenConfig`); every rank scores the same number of micro-batches, so a sharded helper's
all-gathers pair up across ranks. The helper and the policy score under the trainer's
autocast (`WeighContext.policy_dtype`), so Rho-1's two cross-entropies, and the critic's
values, come from forwards in the precision the policy trains in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from weighted_mtp.train.advantages import RunningWhitening, critic_token_weights
from weighted_mtp.train.config import CriticConfig, FrozenConfig, Normalize, Rho1Config
from weighted_mtp.train.critic import critic_values
from weighted_mtp.train.frozen import Placement, freeze, place_frozen
from weighted_mtp.train.rho1 import (
    excess_loss,
    policy_head0_cross_entropy,
    reference_cross_entropy,
    rho1_token_weights,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.train.batches import Batch


@dataclass(frozen=True)
class Weights:
    """One micro-batch's weights: None (uniform), `[batch, seq]` or `[batch, seq, heads]`."""

    values: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WeighContext:
    """What a weighting may use besides the batch.

    `model` is the policy being trained (possibly sharded or carrying LoRA layers; call it,
    or its `trunk`/`head_logits`, under `torch.no_grad()`). `all_reduce_sum` sums a tensor
    over ranks in place and returns it (the identity on one process). `policy_dtype` is the
    dtype the trainer autocasts the policy to (None: float32), which frozen helpers follow.
    """

    model: MtpTransformer
    step: int
    n_heads: int
    device: torch.device
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    policy_dtype: torch.dtype | None = None


@runtime_checkable
class Weighting(Protocol):
    name: str
    normalize: Normalize

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        """Detached weights for `batch` (on `ctx.device`), and metrics to log."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class StepWeighting(Weighting, Protocol):
    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        """`weigh` for every micro-batch of this rank's share of one step at once."""
        ...


@dataclass
class Baseline:
    """The Baseline MTP experiment: every response token and the final EOS weigh 1."""

    normalize: Normalize
    name: str = "baseline"

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        return Weights(None)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the baseline weighting has no state, got {sorted(state)}")


def policy_autocast(ctx: WeighContext) -> AbstractContextManager[Any]:
    """The trainer's autocast, for a helper's and the policy's scoring forwards."""
    dtype = ctx.policy_dtype
    return torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None)


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
    normalize: Normalize
    settings: CriticConfig = field(default_factory=CriticConfig)
    name: str = "verifiable"
    whitening: RunningWhitening = field(default_factory=RunningWhitening)
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    placement: Placement | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        freeze(self.critic)
        self.whitening.momentum = self.settings.momentum

    def scores(self, batches: list[Batch], ctx: WeighContext) -> list[Tensor]:
        """The frozen critic's values of each micro-batch, `[B_i, S_i]` (placed first)."""
        if self.placement is None:
            self.placement = place_frozen(self.critic, self.frozen, ctx.device, ctx.policy_dtype)
        with policy_autocast(ctx):
            return [critic_values(self.critic, b.tokens) for b in batches]

    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        values = self.scores(batches, ctx)
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
    normalize: Normalize
    settings: Rho1Config = field(default_factory=Rho1Config)
    name: str = "rho1"
    frozen: FrozenConfig = field(default_factory=FrozenConfig)
    placement: Placement | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        freeze(self.reference)

    def scores(self, batches: list[Batch], ctx: WeighContext) -> list[Tensor]:
        """Each micro-batch's excess loss Δ of the policy over the frozen reference,
        `[B_i, S_i]` (the reference placed first)."""
        if self.placement is None:
            self.placement = place_frozen(self.reference, self.frozen, ctx.device, ctx.policy_dtype)
        with policy_autocast(ctx):
            return [
                excess_loss(
                    policy_head0_cross_entropy(ctx.model, b.tokens),
                    reference_cross_entropy(self.reference, b.tokens),
                    b.loss_mask,
                )
                for b in batches
            ]

    def weigh_step(self, batches: list[Batch], ctx: WeighContext) -> list[Weights]:
        deltas = self.scores(batches, ctx)
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
