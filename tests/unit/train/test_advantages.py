"""Verifiable Critic weights against brute-force loops in float64."""

from __future__ import annotations

import math

import pytest
import torch

from weighted_mtp.train.advantages import (
    RunningWhitening,
    awr_weights,
    critic_token_weights,
    gae_advantages,
    td_errors,
)
from weighted_mtp.train.config import CriticConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_values(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_advantages(values, loss_mask, is_correct, gamma, lam):
    """The definition, one token at a time: δ_t, then A_t = δ_t + γλ·A_{t+1}."""
    deltas = torch.zeros_like(values, dtype=torch.float64)
    advantages = torch.zeros_like(values, dtype=torch.float64)
    for b in range(values.shape[0]):
        positions = [s for s in range(values.shape[1]) if loss_mask[b, s]]
        reward = float(is_correct[b])
        for i, s in enumerate(positions):
            last = i == len(positions) - 1
            v_prev = float(values[b, s - 1])
            v_next = 0.0 if last else float(values[b, s])
            deltas[b, s] = (reward if last else 0.0) + gamma * v_next - v_prev
        running = 0.0
        for s in reversed(positions):
            running = float(deltas[b, s]) + gamma * lam * running
            advantages[b, s] = running
    return deltas, advantages


@pytest.mark.parametrize(
    ("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 0.0), (1.0, 1.0), (0.0, 0.5)]
)
def test_vectorised_advantages_equal_the_reference_loop(gamma, lam, make_batch):
    batch = make_batch(rows=7, seqlen=30, seed=3)
    values = random_values(batch.tokens.shape)
    deltas, expected = reference_advantages(values, batch.loss_mask, batch.is_correct, gamma, lam)
    torch.testing.assert_close(
        td_errors(values, batch.loss_mask, batch.is_correct, gamma), deltas, rtol=0, atol=1e-12
    )
    actual = gae_advantages(values, batch.loss_mask, batch.is_correct, gamma, lam)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_long_responses_stay_exact_where_powers_underflow(make_batch):
    """0.95^4000 is about 1e-89 and (0.5·0.5)^4000 underflows: no NaN/Inf, still the loop."""
    batch = make_batch(rows=2, seqlen=4000, seed=4)
    values = random_values(batch.tokens.shape, seed=5)
    for gamma, lam in [(1.0, 0.95), (0.5, 0.5)]:
        _, expected = reference_advantages(values, batch.loss_mask, batch.is_correct, gamma, lam)
        actual = gae_advantages(values, batch.loss_mask, batch.is_correct, gamma, lam)
        assert torch.isfinite(actual).all()
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_lambda_zero_gives_the_td_errors(batch):
    values = random_values(batch.tokens.shape)
    for gamma in (1.0, 0.7):
        torch.testing.assert_close(
            gae_advantages(values, batch.loss_mask, batch.is_correct, gamma, 0.0),
            td_errors(values, batch.loss_mask, batch.is_correct, gamma),
            rtol=0,
            atol=0,
        )


def test_gamma_and_lambda_one_telescope_to_outcome_minus_previous_value(batch):
    values = random_values(batch.tokens.shape)
    advantages = gae_advantages(values, batch.loss_mask, batch.is_correct, 1.0, 1.0)
    value_before = torch.zeros_like(values)
    value_before[:, 1:] = values[:, :-1]  # V_{t-1} at each target
    expected = batch.is_correct.double()[:, None] - value_before
    mask = batch.loss_mask
    torch.testing.assert_close(advantages[mask], expected[mask], rtol=0, atol=1e-12)
    assert (advantages[~mask] == 0).all()


def test_values_outside_the_response_and_the_terminal_value_change_nothing(batch):
    values = random_values(batch.tokens.shape)
    mask = batch.loss_mask
    used = torch.zeros_like(mask)
    used[:, :-1] = mask[:, 1:]  # V_{t-1}: the position before each target
    used |= mask
    is_last = mask.clone()
    is_last[:, :-1] &= ~mask[:, 1:]
    used &= ~is_last  # V_T is 0 whatever the critic says after EOS
    noise = random_values(values.shape, seed=9) * 100 - 50
    perturbed = torch.where(used, values, noise)
    assert not torch.equal(perturbed, values)
    settings = CriticConfig()
    for v in (values, perturbed):
        torch.testing.assert_close(
            gae_advantages(v, mask, batch.is_correct, 1.0, 0.95),
            gae_advantages(values, mask, batch.is_correct, 1.0, 0.95),
            rtol=0,
            atol=0,
        )
    first, _ = critic_token_weights(values, mask, batch.is_correct, settings, RunningWhitening())
    second, _ = critic_token_weights(
        perturbed, mask, batch.is_correct, settings, RunningWhitening()
    )
    assert torch.equal(first, second)


def test_a_target_at_position_zero_is_refused(batch):
    mask = batch.loss_mask.clone()
    mask[0, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        td_errors(random_values(mask.shape), mask, batch.is_correct, 1.0)


def test_weights_stay_in_bounds_and_rise_with_the_advantage():
    whitened = torch.linspace(-8, 8, 401, dtype=torch.float64)[None, :]
    mask = torch.ones_like(whitened, dtype=torch.bool)
    weights = awr_weights(whitened, mask, beta=0.7, w_min=0.1, w_max=3.0)[0]
    assert weights.min().item() >= 0.1 and weights.max().item() <= 3.0
    assert weights[0].item() == pytest.approx(0.1) and weights[-1].item() == 3.0
    assert (weights.diff() >= 0).all()
    inside = (whitened[0] / 0.7 > math.log(0.1)) & (whitened[0] / 0.7 < math.log(3.0))
    assert (weights[inside].diff() > 0).all()  # strictly increasing where not clipped
    torch.testing.assert_close(
        weights[inside].double(), (whitened[0, inside] / 0.7).exp(), rtol=1e-6, atol=0
    )
    huge = torch.tensor([[1e6, -1e6, math.inf]], dtype=torch.float64)
    assert awr_weights(huge, torch.ones_like(huge, dtype=torch.bool), 1.0, 0.1, 3.0).tolist() == [
        [3.0, pytest.approx(0.1), 3.0]
    ]


def test_critic_weights_order_targets_by_advantage_and_zero_the_rest(batch):
    values = random_values(batch.tokens.shape)
    settings = CriticConfig()
    weights, metrics = critic_token_weights(
        values, batch.loss_mask, batch.is_correct, settings, RunningWhitening()
    )
    assert not weights.requires_grad and weights.dtype == torch.float32
    assert (weights[~batch.loss_mask] == 0).all()
    valid = weights[batch.loss_mask]
    assert valid.min() >= settings.w_min and valid.max() <= settings.w_max
    advantages = gae_advantages(
        values, batch.loss_mask, batch.is_correct, settings.gamma, settings.lam
    )[batch.loss_mask]
    by_advantage = valid[advantages.argsort()]
    assert (by_advantage.diff() >= 0).all()
    assert metrics["weight_min"] == pytest.approx(valid.min().item())
    assert metrics["weight_max"] == pytest.approx(valid.max().item())
    assert metrics["weight_mean"] == pytest.approx(valid.double().mean().item())
    assert metrics["weight_std"] == pytest.approx(valid.double().std(unbiased=False).item())
    clipped = ((valid <= settings.w_min + 1e-7) | (valid >= settings.w_max)).double().mean()
    assert metrics["weight_clipped_frac"] == pytest.approx(clipped.item())


def test_first_update_whitens_with_the_batch_own_statistics(batch):
    advantages = random_values(batch.tokens.shape) * 4 - 1
    whitening = RunningWhitening()
    whitened = whitening.whiten(advantages, batch.loss_mask)
    valid = whitened[batch.loss_mask]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert valid.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-6)
    assert (whitened[~batch.loss_mask] == 0).all()


def test_running_statistics_match_their_closed_form(make_batch):
    """μ_k = Σ_j c_kj m_j with c_kj = 0.9^(k−10)/10 for j ≤ 10 and 0.1·0.9^(k−j) after."""
    whitening = RunningWhitening(momentum=0.1)
    means, variances = [], []
    for step in range(1, 26):
        batch = make_batch(rows=4, seqlen=20, seed=step)
        advantages = random_values(batch.tokens.shape, seed=100 + step) * step - step / 3
        valid = advantages[batch.loss_mask]
        means.append(valid.mean().item())
        variances.append(valid.var(unbiased=False).item())
        whitening.whiten(advantages, batch.loss_mask)
        k = step

        def closed_form(stats, k=k):
            if k <= 10:
                return sum(stats) / k
            early = sum(stats[:10]) / 10 * 0.9 ** (k - 10)
            return early + sum(0.1 * 0.9 ** (k - j) * stats[j - 1] for j in range(11, k + 1))

        assert whitening.updates == k
        assert whitening.mean == pytest.approx(closed_form(means), rel=1e-12, abs=1e-12)
        assert whitening.var == pytest.approx(closed_form(variances), rel=1e-12)


def test_a_batch_without_targets_leaves_the_statistics_alone(batch):
    whitening = RunningWhitening()
    whitening.whiten(random_values(batch.tokens.shape), batch.loss_mask)
    before = whitening.as_tensor()
    empty = torch.zeros_like(batch.loss_mask)
    out = whitening.whiten(random_values(batch.tokens.shape), empty)
    assert torch.equal(whitening.as_tensor(), before) and (out == 0).all()
    restored = RunningWhitening()
    restored.load_tensor(before)
    assert restored == whitening
