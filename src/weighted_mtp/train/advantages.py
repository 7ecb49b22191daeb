"""Verifiable Critic token weights: TD errors, GAE advantages, running whitening, AWR weights.

Alignment follows the training contract: every `[B, S]` tensor is aligned with target TOKEN
positions. `values[b, s]` is the critic's V after reading `tokens[b, :s+1]`. The response
y_1..y_T (y_T = EOS) is the contiguous span where `loss_mask` is True, y_t at position p_t:

    V_{t-1} = values[b, p_t - 1]      (V_0: after the last prompt token)
    V_t     = values[b, p_t] for t < T,  V_T = 0 (terminal)
    r_t     = R·[t = T],  R = is_correct[b]
    δ_t     = r_t + γ·V_t − V_{t−1}
    A_t     = Σ_{l≥0} (γλ)^l δ_{t+l}
    Â_t     = (A_t − μ) / sqrt(σ² + eps)      (μ, σ² running statistics, `RunningWhitening`)
    w_t     = clip(exp(Â_t / β), w_min, w_max)

Everything is computed in float64 without gradient; outputs are detached, zero at positions
that are not targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from weighted_mtp.train.collectives import all_reduce
from weighted_mtp.train.config import CriticConfig


def last_target(loss_mask: Tensor) -> Tensor:
    """`[B, S]` bool: the last target of each row (y_T, the EOS)."""
    mask = loss_mask.bool()
    next_is_target = torch.zeros_like(mask)
    next_is_target[:, :-1] = mask[:, 1:]
    return mask & ~next_is_target


def td_errors(values: Tensor, loss_mask: Tensor, is_correct: Tensor, gamma: float) -> Tensor:
    """δ_t at every target position, `[B, S]` float64, 0 elsewhere."""
    mask = loss_mask.bool()
    if mask[:, 0].any():
        raise ValueError("position 0 cannot be a target: nothing precedes it to predict it")
    v = values.detach().to(torch.float64)  # [B, S]
    value_before = torch.zeros_like(v)
    value_before[:, 1:] = v[:, :-1]  # V_{t-1} at the target's position
    is_last = last_target(mask)
    value_after = torch.where(is_last, 0.0, v)  # V_t, with V_T = 0
    reward = is_last.to(torch.float64) * is_correct.to(torch.float64)[:, None]  # r_T = R
    delta = reward + gamma * value_after - value_before
    return torch.where(mask, delta, 0.0)


def discounted_reverse_cumsum(x: Tensor, discount: float) -> Tensor:
    """out[b, i] = Σ_{j≥i} discount^(j−i) · x[b, j], as one matmul with a Toeplitz kernel.

    Exact in float64 for any discount in [0, 1] (no division by powers that underflow);
    the kernel is `[S, S]`, 32 MiB at S = 2048.
    """
    seqlen = x.shape[1]
    pos = torch.arange(seqlen, device=x.device)
    gap = pos[None, :] - pos[:, None]  # [S, S]: j - i
    base = torch.tensor(discount, dtype=torch.float64, device=x.device)
    kernel = torch.where(gap >= 0, base.pow(gap.clamp(min=0)), 0.0)  # [S, S], 0**0 = 1
    return x.to(torch.float64) @ kernel.T  # [B, S]


def gae_advantages(
    values: Tensor, loss_mask: Tensor, is_correct: Tensor, gamma: float, lam: float
) -> Tensor:
    """A_t = Σ_l (γλ)^l δ_{t+l} over the row's remaining targets, `[B, S]` float64.

    δ is zero off the response span, so the sum never crosses into padding or another row.
    """
    delta = td_errors(values, loss_mask, is_correct, gamma)
    return torch.where(loss_mask.bool(), discounted_reverse_cumsum(delta, gamma * lam), 0.0)


def masked_moments(x: Tensor, mask: Tensor) -> tuple[float, float, float]:
    """(count, mean, population variance) of `x[mask]` over all ranks, two-pass in float64."""
    x = x.detach().to(torch.float64)
    mask = mask.bool()
    totals = all_reduce(torch.stack([mask.sum().to(torch.float64), x[mask].sum()]))
    count, total = float(totals[0]), float(totals[1])
    if count == 0:
        return 0.0, 0.0, 0.0
    mean = total / count
    squares = float(all_reduce(((x[mask] - mean) ** 2).sum()))
    return count, mean, squares / count


@dataclass
class RunningWhitening:
    """Running mean and variance of the advantages, for Â = (A − μ) / sqrt(σ² + eps).

    Each update k (one call with one global batch, k = 1, 2, ...) blends in that batch's
    statistics (m_k, s²_k) over all its valid tokens on all ranks at the rate
    α_k = max(momentum, 1/k):  μ_k = μ_{k−1} + α_k·(m_k − μ_{k−1}), likewise σ²_k from s²_k.
    With momentum 0.1 the first 10 updates give the plain average of the batch statistics
    seen so far (update 1 whitens with its own batch's statistics) and later updates are an
    EMA with momentum 0.1. A batch without valid tokens leaves the statistics unchanged.
    """

    momentum: float = CriticConfig().momentum
    eps: float = 1e-8
    updates: int = 0
    mean: float = 0.0
    var: float = 1.0

    def update(self, batch_mean: float, batch_var: float) -> None:
        self.updates += 1
        rate = max(self.momentum, 1.0 / self.updates)
        self.mean += rate * (batch_mean - self.mean)
        self.var += rate * (batch_var - self.var)

    def whiten(self, advantages: Tensor, loss_mask: Tensor) -> Tensor:
        """Update with this batch's global statistics, then whiten it; `[B, S]` float64."""
        count, batch_mean, batch_var = masked_moments(advantages, loss_mask)
        if count > 0:
            self.update(batch_mean, batch_var)
        whitened = (advantages.to(torch.float64) - self.mean) / math.sqrt(self.var + self.eps)
        return torch.where(loss_mask.bool(), whitened, 0.0)

    def as_tensor(self) -> Tensor:
        """(updates, mean, var) as float64 `[3]`, the form checkpoints store."""
        return torch.tensor([self.updates, self.mean, self.var], dtype=torch.float64)

    def load_tensor(self, state: Tensor) -> None:
        updates, mean, var = state.tolist()
        self.updates, self.mean, self.var = int(updates), float(mean), float(var)


def awr_weights(
    whitened: Tensor, loss_mask: Tensor, beta: float, w_min: float, w_max: float
) -> Tensor:
    """w = clip(exp(Â/β), w_min, w_max) at targets (0 elsewhere), `[B, S]` float32.

    The exponent is capped at log(w_max) before `exp`, which changes nothing after the clip
    but keeps large advantages from overflowing.
    """
    exponent = whitened.detach().to(torch.float64) / beta
    weights = exponent.clamp(max=math.log(w_max)).exp().clamp(w_min, w_max)
    return torch.where(loss_mask.bool(), weights, 0.0).float()


def clipped_fraction_terms(whitened: Tensor, loss_mask: Tensor, critic: CriticConfig) -> Tensor:
    """`[B, S]` bool: targets whose exp(Â/β) fell outside [w_min, w_max] and was clipped."""
    exponent = whitened.detach().to(torch.float64) / critic.beta
    outside = (exponent < math.log(critic.w_min)) | (exponent > math.log(critic.w_max))
    return outside & loss_mask.bool()


def weight_statistics(weights: Tensor, clipped: Tensor, loss_mask: Tensor) -> dict[str, float]:
    """Mean, std, min, max and clipped fraction of the weights over all ranks' targets."""
    mask = loss_mask.bool()
    w = weights.detach().to(torch.float64)[mask]
    sums = all_reduce(
        torch.stack(
            [
                mask.sum().to(torch.float64),
                w.sum(),
                (w**2).sum(),
                clipped.sum().to(torch.float64),
            ]
        )
    )
    count = float(sums[0])
    if count == 0:
        return {}
    mean = float(sums[1]) / count
    inf = torch.tensor(math.inf, dtype=torch.float64, device=w.device)
    low = all_reduce(w.min() if w.numel() else inf, "min")
    high = all_reduce(w.max() if w.numel() else -inf, "max")
    return {
        "weight_mean": mean,
        "weight_std": math.sqrt(max(float(sums[2]) / count - mean**2, 0.0)),
        "weight_min": float(low),
        "weight_max": float(high),
        "weight_clipped_frac": float(sums[3]) / count,
    }


@torch.no_grad()
def critic_token_weights(
    values: Tensor,
    loss_mask: Tensor,
    is_correct: Tensor,
    critic: CriticConfig,
    whitening: RunningWhitening,
) -> tuple[Tensor, dict[str, float]]:
    """The Verifiable Critic's `[B, S]` weights from the frozen critic's values, and metrics.

    Updates `whitening` with this global batch.
    """
    advantages = gae_advantages(values, loss_mask, is_correct, critic.gamma, critic.lam)
    whitened = whitening.whiten(advantages, loss_mask)
    weights = awr_weights(whitened, loss_mask, critic.beta, critic.w_min, critic.w_max)
    clipped = clipped_fraction_terms(whitened, loss_mask, critic)
    metrics = weight_statistics(weights, clipped, loss_mask)
    metrics |= {"adv_running_mean": whitening.mean, "adv_running_std": math.sqrt(whitening.var)}
    return weights, metrics
