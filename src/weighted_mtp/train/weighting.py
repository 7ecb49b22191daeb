"""Pluggable per-token weights: what distinguishes the three experiments.

The one trainer calls a `Weighting` for every micro-batch of a step before it computes any
gradient of that step, and scales each target's cross-entropy by the returned weight:

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

A `StepWeighting` also has `weigh_step`, and the trainer then hands it all micro-batches of
a step in one call: its statistics span the global batch however it is split into
micro-batches and ranks (Rho-1's top fraction, the critic's whitening).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from weighted_mtp.models.adapter import MtpTransformer
    from weighted_mtp.train.data import Batch

Normalize = Literal["count", "weight", "selected"]


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

    name: str = "baseline"
    normalize: Normalize = "count"

    def weigh(self, batch: Batch, ctx: WeighContext) -> Weights:
        return Weights(None)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the baseline weighting has no state, got {sorted(state)}")
