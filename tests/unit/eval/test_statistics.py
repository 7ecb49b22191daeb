"""The comparison's statistics against independent implementations: McNemar against scipy's
exact binomial test, the paired bootstrap against scipy's paired percentile bootstrap and
against the exact bootstrap distribution (every resample of a tiny task set enumerated),
per-task pass@k against the fraction of all k-subsets holding a correct sample."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from weighted_mtp.eval.statistics import (
    Interval,
    against_first,
    bootstrap_means,
    mcnemar_exact,
    percentile_interval,
    task_pass_at_k,
)


def paired_difference(
    baseline: np.ndarray, other: np.ndarray, resamples: int, seed: int
) -> Interval:
    (difference,) = against_first(np.stack([baseline, other]), resamples, seed).differences
    return difference


def paired(baseline_only: int, other_only: int, both: int, neither: int):
    """Verdict lists with the given counts of each (baseline, other) outcome, interleaved."""
    pairs = (
        [(True, False)] * baseline_only
        + [(False, True)] * other_only
        + [(True, True)] * both
        + [(False, False)] * neither
    )
    order = np.random.default_rng(len(pairs)).permutation(len(pairs))
    return [pairs[i][0] for i in order], [pairs[i][1] for i in order]


@pytest.mark.parametrize("baseline_only", range(0, 13))
def test_mcnemar_equals_scipys_exact_binomial_test(baseline_only: int) -> None:
    for other_only in range(0, 13):
        a, b = paired(baseline_only, other_only, both=5, neither=3)
        result = mcnemar_exact(a, b)
        assert (result.baseline_only, result.other_only) == (baseline_only, other_only)
        discordant = baseline_only + other_only
        expected = (
            1.0 if discordant == 0 else stats.binomtest(baseline_only, discordant, 0.5).pvalue
        )
        assert result.p_value == pytest.approx(expected, rel=1e-12, abs=0), (a, b)


@pytest.mark.parametrize(
    ("baseline_only", "other_only"), [(3, 60), (140, 100), (250, 251), (0, 400)]
)
def test_mcnemar_on_benchmark_sized_counts(baseline_only: int, other_only: int) -> None:
    a, b = paired(baseline_only, other_only, both=20, neither=30)
    expected = stats.binomtest(other_only, baseline_only + other_only, 0.5).pvalue
    assert mcnemar_exact(a, b).p_value == pytest.approx(expected, rel=1e-9)


def test_mcnemar_is_symmetric_and_concordant_tasks_do_not_count() -> None:
    a, b = paired(2, 9, both=0, neither=0)
    swapped = mcnemar_exact(b, a)
    assert (swapped.baseline_only, swapped.other_only) == (9, 2)
    assert swapped.p_value == mcnemar_exact(a, b).p_value
    more = paired(2, 9, both=100, neither=100)
    assert mcnemar_exact(*more).p_value == mcnemar_exact(a, b).p_value


def enumerated_pass_at_k(verdicts: list[bool], k: int) -> float:
    """The fraction of all k-subsets of a task's samples that hold a correct one."""
    subsets = list(itertools.combinations(verdicts, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_per_task_pass_at_k_equals_the_k_subset_enumeration() -> None:
    rng = np.random.default_rng(1)
    tasks = [
        [bool(x) for x in rng.random(n) < p] for n, p in ((8, 0.3), (7, 0.0), (6, 1.0), (9, 0.5))
    ]
    for k in (1, 2, 3, 6):
        got = task_pass_at_k([(len(v), sum(v)) for v in tasks], k)
        assert got.dtype == np.float64
        expected = [enumerated_pass_at_k(v, k) for v in tasks]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)


def correlated_tasks(n_tasks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-task pass@k of two models where task difficulty dominates (strongly paired)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_tasks)
    baseline = np.clip(difficulty + rng.normal(0, 0.05, n_tasks), 0, 1)
    other = np.clip(difficulty + 0.03 + rng.normal(0, 0.05, n_tasks), 0, 1)
    return baseline, other


def test_paired_bootstrap_agrees_with_scipys_paired_percentile_bootstrap() -> None:
    baseline, other = correlated_tasks(164, seed=2)
    ours = paired_difference(baseline, other, resamples=40_000, seed=3)
    theirs = stats.bootstrap(
        (baseline, other),
        lambda a, b, axis: np.mean(b, axis=axis) - np.mean(a, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=0.95,
        n_resamples=40_000,
        rng=np.random.default_rng(4),
    )
    # Monte-Carlo error of a 2.5% quantile from 40k draws is ~0.02 standard errors per side.
    tolerance = 0.1 * theirs.standard_error
    assert ours.estimate == pytest.approx(other.mean() - baseline.mean(), abs=1e-15)
    assert ours.low == pytest.approx(theirs.confidence_interval.low, abs=tolerance)
    assert ours.high == pytest.approx(theirs.confidence_interval.high, abs=tolerance)
    # Pairing matters here: the unpaired interval is several times wider.
    unpaired = stats.bootstrap(
        (other,), np.mean, method="percentile", n_resamples=2000, rng=np.random.default_rng(5)
    ).standard_error
    assert theirs.standard_error < unpaired / 3


def exact_bootstrap(baseline: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every resample of n task ids (n^n equally likely): the support of the paired mean
    difference and its exact CDF."""
    n = len(baseline)
    picks = np.array(list(itertools.product(range(n), repeat=n)))  # [n^n, n]
    differences = np.round(other[picks].mean(axis=1) - baseline[picks].mean(axis=1), 12)
    support, counts = np.unique(differences, return_counts=True)
    return support, np.cumsum(counts) / len(picks)


def test_paired_bootstrap_draws_from_the_exact_bootstrap_distribution() -> None:
    baseline = np.array([0.0, 1.0, 0.5, 1.0, 0.0, 0.25])
    other = np.array([1.0, 1.0, 0.75, 0.0, 0.0, 1.0])
    support, cdf = exact_bootstrap(baseline, other)  # 6^6 = 46656 resamples
    draws = 60_000
    means = bootstrap_means(np.stack([baseline, other]), draws, seed=7)
    differences = np.round(means[:, 1] - means[:, 0], 12)
    empirical = np.searchsorted(np.sort(differences), support, side="right") / draws
    # Dvoretzky-Kiefer-Wolfowitz: P(sup |F_B - F| > 0.012) <= 2 exp(-2 B 0.012^2) < 1e-7.
    assert np.max(np.abs(empirical - cdf)) < 0.012
    interval = paired_difference(baseline, other, resamples=draws, seed=7)
    # The interval's ends are the exact distribution's 2.5% and 97.5% quantiles, up to the
    # CDF's Monte-Carlo error.
    for end, tail in ((interval.low, 0.025), (interval.high, 0.975)):
        lower = support[np.searchsorted(cdf, tail - 0.012)]
        upper = support[min(np.searchsorted(cdf, tail + 0.012), len(support) - 1)]
        assert lower <= end <= upper, (end, tail, lower, upper)
    assert interval.estimate == pytest.approx(np.mean(other - baseline), abs=1e-15)


def test_the_bootstrap_is_seeded_and_the_same_resample_serves_every_model() -> None:
    values = np.stack(correlated_tasks(50, seed=9))
    first = bootstrap_means(values, 3000, seed=11)
    assert np.array_equal(first, bootstrap_means(values, 3000, seed=11))
    assert not np.array_equal(first, bootstrap_means(values, 3000, seed=12))
    # A model identical to another gets identical resampled means: the same task ids.
    twice = bootstrap_means(np.stack([values[0], values[0]]), 3000, seed=11)
    assert np.array_equal(twice[:, 0], twice[:, 1])
    # Resamples drawn in several batches are the ones a single batch would draw first.
    longer = bootstrap_means(values, 5000, seed=11)
    assert np.array_equal(longer[:3000], first)


def test_percentile_interval_is_numpys_linear_quantiles() -> None:
    draws = np.arange(101, dtype=np.float64)
    interval = percentile_interval(50.0, draws, 0.9)
    assert (interval.low, interval.high) == pytest.approx((5.0, 95.0), abs=1e-12)
    assert interval.excludes_zero
    assert not percentile_interval(0.0, draws - 50, 0.9).excludes_zero
    with pytest.raises(ValueError):
        percentile_interval(0.0, draws, 1.0)
