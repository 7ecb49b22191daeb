"""Rho-1 token selection (Lin et al. 2024): train on the targets the policy finds harder than
a reference model fine-tuned on high-quality data does.

For target y_t (aligned with its TOKEN position, as in the training contract):

    Δ_t = CE_policy_head0(y_t) − CE_reference(y_t)

both next-token predictions of the same target, computed without gradient with the policy in
eval mode. The top ⌈κ·N⌉ of the N valid targets of the global batch by score (Δ, or |Δ| with
`score="absolute"`) get weight 1, the rest 0; ties go to the earlier (rank, row, position).
The selection applies to that target for every head.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weighted_mtp.train.collectives import all_gather_1d, all_reduce
from weighted_mtp.train.config import Rho1Config, Score
from weighted_mtp.train.frozen import scoring_mode


def selected_count(kappa: float, n_valid: int) -> int:
    """⌈κ·N⌉, with κ taken as the decimal it is written as (0.1 · 10 is 1, not 2)."""
    return math.ceil(Fraction(str(kappa)) * n_valid)


def target_cross_entropy(logits: Tensor, tokens: Tensor) -> Tensor:
    """ce[b, s] = CE of predicting tokens[b, s] from logits[b, s−1]; ce[:, 0] = 0. `[B, S]`
    float32 whatever the logits' dtype: the log-softmax runs on logits upcast to float32."""
    bsz, seqlen, vocab = logits.shape
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(bsz, seqlen - 1)
    return F.pad(ce, (1, 0))  # [B, S]: aligned with the target token


def policy_head0_cross_entropy(policy: nn.Module, tokens: Tensor) -> Tensor:
    """Head 0's next-token CE per target, policy in eval mode, `[B, S]`."""
    with scoring_mode(policy):
        logits = policy(tokens, return_all_heads=False)[:, :, 0]  # [B, S, V]
        return target_cross_entropy(logits, tokens)


def reference_cross_entropy(reference: nn.Module, tokens: Tensor) -> Tensor:
    """The reference causal LM's next-token CE per target, `[B, S]`."""
    with scoring_mode(reference):
        return target_cross_entropy(reference(tokens).logits, tokens)


def excess_loss(policy_ce: Tensor, reference_ce: Tensor, loss_mask: Tensor) -> Tensor:
    """Δ = CE_policy − CE_reference at targets, 0 elsewhere, `[B, S]` float32.

    Both CEs must already be float32 (`target_cross_entropy` gives that for a policy and a
    reference of any dtype): a CE computed in bf16 carries bf16's rounding into Δ, so it is
    refused here rather than cast after the fact.
    """
    for name, ce in (("policy", policy_ce), ("reference", reference_ce)):
        if ce.dtype != torch.float32:
            raise TypeError(f"the {name} cross-entropy is {ce.dtype}: Δ needs float32 CEs")
    return torch.where(loss_mask.bool(), policy_ce - reference_ce, 0.0).detach()


def select_top_fraction(scores: Tensor, loss_mask: Tensor, kappa: float) -> Tensor:
    """`[B, S]` bool: the top ⌈κ·N⌉ of the N valid targets of the global batch by score.

    All ranks' valid scores are joined in (rank, row, position) order and sorted stably, so
    equal scores go to the earlier target and every rank agrees on the selection.
    """
    mask = loss_mask.bool()
    joined, offset = all_gather_1d(scores.detach().float()[mask])  # [N] in global order
    n_selected = selected_count(kappa, joined.numel())
    order = torch.sort(joined, descending=True, stable=True).indices
    chosen = torch.zeros_like(joined, dtype=torch.bool)
    chosen[order[:n_selected]] = True
    selected = torch.zeros_like(mask)
    selected[mask] = chosen[offset : offset + int(mask.sum())]
    return selected


def rho1_scores(delta: Tensor, score: Score) -> Tensor:
    return delta.abs() if score == "absolute" else delta


def selection_statistics(delta: Tensor, selected: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """Selected fraction and mean Δ of selected vs unselected targets, over all ranks."""
    mask = loss_mask.bool()
    unselected = mask & ~selected
    d = delta.detach().to(torch.float64)
    sums = all_reduce(
        torch.stack(
            [
                mask.sum().to(torch.float64),
                selected.sum().to(torch.float64),
                d[selected].sum(),
                unselected.sum().to(torch.float64),
                d[unselected].sum(),
            ]
        )
    )
    count, n_sel, sum_sel, n_unsel, sum_unsel = (float(v) for v in sums)
    if count == 0:
        return {}
    metrics = {"selected_frac": n_sel / count}
    if n_sel:
        metrics["delta_selected_mean"] = sum_sel / n_sel
    if n_unsel:
        metrics["delta_unselected_mean"] = sum_unsel / n_unsel
    return metrics


def rho1_token_weights(
    delta: Tensor, loss_mask: Tensor, settings: Rho1Config
) -> tuple[Tensor, dict[str, float]]:
    """Rho-1's 0/1 `[B, S]` weights from the excess losses of one global batch, and metrics."""
    selected = select_top_fraction(rho1_scores(delta, settings.score), loss_mask, settings.kappa)
    return selected.float(), selection_statistics(delta, selected, loss_mask)
