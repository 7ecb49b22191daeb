"""Test oracles: plain, whole-batch versions of what the package computes in pieces, kept
out of the package because only tests compare against them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from weighted_mtp.models.adapter import MtpCache, MtpTransformer, cached_latents
from weighted_mtp.train.config import Normalize
from weighted_mtp.train.critic import Objective, mc_loss, pairwise_loss
from weighted_mtp.train.losses import check_weights, head_loss_sum, head_scales, normaliser_terms


class MtpLoss(NamedTuple):
    loss: Tensor
    per_head: Tensor


def weighted_mtp_loss(
    logits: Tensor,
    tokens: Tensor,
    loss_mask: Tensor,
    weights: Tensor | None = None,
    normalize: Normalize = "count",
    normaliser: Tensor | None = None,
) -> MtpLoss:
    """The loss of `logits` `[B, S, heads, vocab]` with every head's logits in memory:
    `loss` (the mean over heads with targets of `per_head`) and `per_head` (each head's
    weighted sum / its normaliser). `normaliser` `[heads]` defaults to this batch's own;
    pass the global one for a micro-batch's share."""
    n_heads = logits.shape[2]
    check_weights(tokens, weights, n_heads)
    if normaliser is None:
        normaliser = normaliser_terms(loss_mask, weights, n_heads, normalize)
    sums = torch.stack(
        [head_loss_sum(logits[:, :, k], tokens, loss_mask, weights, k) for k in range(n_heads)]
    )
    normaliser = normaliser.to(sums)
    per_head = sums / normaliser.clamp(min=1e-30) * (normaliser > 0)
    return MtpLoss((sums * head_scales(normaliser)).sum(), per_head)


def critic_loss(
    objective: Objective,
    logits: Tensor,
    loss_mask: Tensor,
    is_correct: Tensor,
    task_ids: Sequence[str],
) -> Tensor | None:
    """The value model's loss under `objective` (None for pairwise without a pair)."""
    if objective == "mc":
        return mc_loss(logits, loss_mask, is_correct)
    return pairwise_loss(logits, loss_mask, is_correct, task_ids)


def forward_cached(
    model: MtpTransformer, tokens: Tensor, cache: MtpCache, n_heads: int = 1
) -> Tensor:
    """float32 logits `[batch, seq, n_heads, vocab]` for `tokens` continuing the cached
    positions; equal (within float rounding) to the matching rows of `model(all tokens)`."""
    logits: Tensor = model.output(cached_latents(model, tokens, cache, n_heads))
    return logits.float()
