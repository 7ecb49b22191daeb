"""The weighted MTP loss, its global normaliser, and the sequential-head backward.

Head k at position t predicts token t + k + 1 (`weighted_mtp.models.adapter`). For head k,
a target token t counts when `loss_mask[b, t]` is True; its cross-entropy is scaled by the
weight (`weights[b, t]` for `[batch, seq]` weights, `weights[b, t - k - 1, k]` for
`[batch, seq, heads]`; 1 without weights). Head k's loss is

    sum(weight x CE over its valid targets) / normaliser_k

with normaliser_k, by `normalize`: `count` (valid targets, as `adapter.mtp_loss`),
`weight` (sum of their weights) or `selected` (valid targets with a non-zero weight). The
loss is the mean over the heads whose normaliser is positive.

Global batches: the trainer sums the normalisers over every micro-batch of a step and over
all ranks first (`normaliser_terms`, then an all-reduce), and each micro-batch's loss is
its share `sum / global normaliser`; the shares add up to the global batch's loss, so
gradients simply accumulate and sum over ranks, whatever the split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from weighted_mtp.train.config import Normalize

if TYPE_CHECKING:
    from weighted_mtp.models.adapter import MtpTransformer

NORMALIZE: tuple[Normalize, ...] = ("count", "weight", "selected")
IGNORE = -100  # cross_entropy's ignore_index: positions without a target


class HeadTargets(NamedTuple):
    """Head k's targets `[B, S-k-1]`: token ids, which count, and their weights (float32,
    or float64 for float64 weights)."""

    ids: Tensor
    valid: Tensor
    weight: Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 upcast to float32 for the loss; float64 kept (the gradient tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_weights(tokens: Tensor, weights: Tensor | None, n_heads: int) -> None:
    bsz, seqlen = tokens.shape
    if weights is not None and weights.shape not in ((bsz, seqlen), (bsz, seqlen, n_heads)):
        raise ValueError(
            f"weights {list(weights.shape)} must be [batch, seq] = {[bsz, seqlen]} "
            f"or [batch, seq, heads] = {[bsz, seqlen, n_heads]}"
        )


def head_targets(tokens: Tensor, loss_mask: Tensor, weights: Tensor | None, k: int) -> HeadTargets:
    """What head k at positions 0 .. S-k-2 is scored against (nothing when S <= k + 1:
    a micro-batch's longest row may be shorter than the heads reach)."""
    shift, seqlen = k + 1, tokens.shape[1]
    ids = tokens[:, shift:]  # [B, max(S-k-1, 0)]
    valid = loss_mask[:, shift:].bool()
    if weights is None:
        weight = valid.float()
    elif weights.dim() == 2:
        weight = at_least_float32(weights[:, shift:]) * valid
    else:
        weight = at_least_float32(weights[:, : max(seqlen - shift, 0), k]) * valid
    return HeadTargets(ids, valid, weight)


def normaliser_terms(
    loss_mask: Tensor, weights: Tensor | None, n_heads: int, normalize: Normalize
) -> Tensor:
    """This micro-batch's contribution to each head's normaliser, float64 `[heads]`."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, not {normalize!r}")
    check_weights(loss_mask, weights, n_heads)
    terms = []
    for k in range(n_heads):
        t = head_targets(loss_mask, loss_mask, weights, k)
        if normalize == "count":
            terms.append(t.valid.sum())
        elif normalize == "weight":
            terms.append(t.weight.double().sum())
        else:
            terms.append((t.valid & (t.weight != 0)).sum())
    return torch.stack(terms).double()


def head_loss_sum(
    logits: Tensor, tokens: Tensor, loss_mask: Tensor, weights: Tensor | None, k: int
) -> Tensor:
    """sum(weight x CE) of head k's valid targets; `logits` `[B, S, vocab]` are head k's.

    The last k + 1 positions (all of them when S <= k + 1) have no target: they get weight 0
    and an ignored target instead of being sliced off, so the backward writes the logits'
    gradient directly (slicing would allocate and zero a second logits-sized tensor)."""
    t = head_targets(tokens, loss_mask, weights, k)
    pad = (0, tokens.shape[1] - t.ids.shape[1])
    ids = F.pad(t.ids, pad, value=IGNORE)  # [B, S]
    weight = F.pad(t.weight, pad)  # [B, S]
    scores = at_least_float32(logits)  # [B, S, vocab]
    ce = F.cross_entropy(scores.flatten(0, 1), ids.flatten(), reduction="none", ignore_index=IGNORE)
    return (ce.view_as(ids) * weight.to(ce.dtype)).sum()


def head_scales(normaliser: Tensor) -> Tensor:
    """1 / (normaliser_k x heads with targets) per head, 0 for a head without targets:
    a head's weighted sum times its scale is its share of the mean-over-heads loss."""
    active = normaliser > 0
    n_active = active.sum().clamp(min=1)
    return torch.where(active, 1.0 / (normaliser.clamp(min=1e-30) * n_active), 0.0)


def naive_backward(
    model: MtpTransformer, tokens: Tensor, loss_mask: Tensor, weights: Tensor | None, scales: Tensor
) -> Tensor:
    """Forward all heads at once (every head's logits in memory), backward once. Returns
    each head's weighted CE sum `[heads]`, detached. The oracle for `sequential_backward`."""
    n_heads = scales.shape[0]
    logits = model(tokens, return_all_heads=n_heads > 1)[:, :, :n_heads]  # [B, S, H, V]
    sums = torch.stack(
        [head_loss_sum(logits[:, :, k], tokens, loss_mask, weights, k) for k in range(n_heads)]
    )
    torch.autograd.backward((sums * scales.to(sums)).sum())
    return sums.detach()


def sequential_backward(
    model: MtpTransformer, tokens: Tensor, loss_mask: Tensor, weights: Tensor | None, scales: Tensor
) -> Tensor:
    """The same gradients as `naive_backward` holding one head's logits at a time.

    The trunk runs once; each head in turn runs its block, the shared norm and output and
    the loss on a detached copy of the trunk output and is backpropagated at once, its
    gradient for the trunk output accumulating on that copy; the trunk is backpropagated
    once at the end (Gloeckle et al. 2024, section on memory-efficient training).
    """
    n_heads = scales.shape[0]
    h, cos, sin = model.trunk(tokens)  # [B, S, dim]
    h_detached = h.detach().requires_grad_(True)
    sums = []
    for k in range(n_heads):
        logits = model.head_logits(h_detached, k, cos, sin)  # [B, S, V]
        head_sum = head_loss_sum(logits, tokens, loss_mask, weights, k)
        torch.autograd.backward(head_sum * scales[k].to(head_sum))
        sums.append(head_sum.detach())
        del logits
    if h_detached.grad is not None and h.requires_grad:
        torch.autograd.backward(h, h_detached.grad)
    return torch.stack(sums)
