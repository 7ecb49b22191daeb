"""The Verifiable Critic's value model, its two objectives and its validation metrics.

A value model is a Llama backbone (transformers' `LlamaModel`, by default the reference
model's, LoRA or full) plus a small value head (MLP to one logit); V = sigmoid(logit)
estimates P(correct). `logits[b, s]` is the value logit after reading `tokens[b, :s+1]`.
For the response y_1..y_T at positions p_1..p_T (the targets of `loss_mask`), the values
V_0..V_{T−1} sit at positions p_t − 1: V_0 after the last prompt token, V_t after y_t.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weighted_mtp.train.frozen import scoring_mode

Objective = Literal["mc", "pairwise"]


class ValueHead(nn.Module):
    """hidden state -> one logit: Linear, tanh, Linear. The output layer starts at zero, so
    a fresh critic says V = 0.5 everywhere."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        logit: Tensor = self.out(torch.tanh(self.proj(h)))  # [..., 1]
        # A new tensor, not squeeze's view: FSDP2 warns when a sharded model returns a view
        # (an in-place op on it would skip its backward hook).
        return logit.sum(-1)


class ValueModel(nn.Module):
    """Backbone + value head; `forward(tokens [B, S])` gives value logits `[B, S]` in float32
    (float64 for a float64 model: the exact tests)."""

    def __init__(self, backbone: nn.Module, head_hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        config: Any = backbone.config  # a transformers LlamaConfig
        self.head = ValueHead(config.hidden_size, head_hidden)

    def forward(self, tokens: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=tokens).last_hidden_state  # [B, S, D]
        logits: Tensor = self.head(hidden)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # [B, S]


def value_positions(loss_mask: Tensor) -> Tensor:
    """`[B, S]` bool: the positions of V_0..V_{T−1}, one before each target."""
    mask = loss_mask.bool()
    positions = torch.zeros_like(mask)
    positions[:, :-1] = mask[:, 1:]
    return positions


def response_mean(x: Tensor, loss_mask: Tensor) -> Tensor:
    """Per record, the mean of `x` over the value positions V_0..V_{T−1}, `[B]`."""
    positions = value_positions(loss_mask).to(x.dtype)
    return (x * positions).sum(1) / positions.sum(1).clamp(min=1)


def mc_loss_sum(logits: Tensor, loss_mask: Tensor, is_correct: Tensor) -> tuple[Tensor, Tensor]:
    """Sum over records with a response of (mean over t = 1..T of BCE(V_{t−1}, R)), from
    the logits, and how many records that is (0-dim). Masked, not indexed: every shape
    follows from the batch's, so `wmtp train plan` traces it on fake tensors."""
    target = is_correct.to(logits.dtype)[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # [B, S]
    has_response = value_positions(loss_mask).any(1)
    per_record = torch.where(has_response, response_mean(bce, loss_mask), 0.0)
    return per_record.sum(), has_response.sum()


def mc_loss(logits: Tensor, loss_mask: Tensor, is_correct: Tensor) -> Tensor:
    """Mean over records of (mean over t = 1..T of BCE(V_{t−1}, R)), from the logits."""
    total, count = mc_loss_sum(logits, loss_mask, is_correct)
    return total / count


def task_codes(task_ids: Sequence[str], device: torch.device | str = "cpu") -> Tensor:
    """`[B]` int64: one code per task id, the same on every rank and in every run (so the
    records of one task can be matched after their codes are gathered from all ranks)."""
    codes = [
        int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") >> 1
        for t in task_ids
    ]
    return torch.tensor(codes, dtype=torch.long, device=device)


def correct_incorrect_pairs(is_correct: Tensor, tasks: Sequence[str] | Tensor) -> Tensor:
    """`[B, B]` bool: pair[i, j] when i is correct, j incorrect, and both solve one task
    (`tasks`: task ids, or their `task_codes`)."""
    task = tasks if isinstance(tasks, Tensor) else task_codes(tasks, is_correct.device)
    correct = is_correct.bool()
    return (task[:, None] == task[None, :]) & correct[:, None] & ~correct[None, :]


def pair_loss(mean_logit: Tensor, pairs: Tensor) -> Tensor:
    """Mean over the `pairs` `[B, B]` of −log σ(mean logit⁺ − mean logit⁻), from each
    record's mean logit `[B]`; 0 without pairs."""
    margin = mean_logit[:, None] - mean_logit[None, :]  # [B, B]
    terms = F.softplus(-margin)[pairs]  # softplus(-x) = -log sigmoid(x)
    return terms.sum() / max(int(pairs.sum()), 1)


def pairwise_loss(
    logits: Tensor, loss_mask: Tensor, is_correct: Tensor, task_ids: Sequence[str]
) -> Tensor | None:
    """Mean over same-task (correct, incorrect) pairs of −log σ(mean logit⁺ − mean logit⁻);
    None when the batch holds no such pair."""
    pairs = correct_incorrect_pairs(is_correct, task_ids)
    if not pairs.any():
        return None
    return pair_loss(response_mean(logits, loss_mask), pairs)


def critic_values(critic: nn.Module, tokens: Tensor) -> Tensor:
    """V = sigmoid(logit) at every position, from a frozen critic, `[B, S]` float32."""
    with scoring_mode(critic):
        return torch.sigmoid(critic(tokens)).float()


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Mann-Whitney U from average ranks, O(N log N).
    """
    s = scores.detach().to(torch.float64).reshape(-1)
    positive = labels.bool().reshape(-1)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    order = torch.argsort(s)
    _, group, counts = torch.unique_consecutive(s[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based average rank of each group
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[group]
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def pairwise_accuracy(scores: Tensor, is_correct: Tensor, task_ids: Sequence[str]) -> float | None:
    """Fraction of same-task (correct, incorrect) pairs that the score orders right (ties
    1/2); None without pairs. One task at a time, so memory stays per task."""
    s = scores.detach().to(torch.float64).reshape(-1)
    correct = is_correct.bool().reshape(-1)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(task_ids):
        by_task.setdefault(task, []).append(i)
    wins, total = 0.0, 0
    for indices in by_task.values():
        idx = torch.tensor(indices)
        pos, neg = s[idx][correct[idx]], s[idx][~correct[idx]]
        diff = pos[:, None] - neg[None, :]  # [P, N]
        wins += float((diff > 0).sum()) + 0.5 * float((diff == 0).sum())
        total += diff.numel()
    return wins / total if total else None
