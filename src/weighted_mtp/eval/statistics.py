"""Statistics for evaluations of several models on the same tasks.

Per-task pass@k (the unbiased estimator, `passk`), a bootstrap over tasks that draws the
same resample of task ids for every model (so differences are paired: a task that is hard
for one is hard for the other), percentile intervals, and McNemar's exact test on paired
pass/fail verdicts. Pure numpy and integers (no torch); tests check each function against
scipy and against brute-force enumeration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb

import numpy as np
import numpy.typing as npt

from weighted_mtp.eval.passk import pass_at_k

FloatArray = npt.NDArray[np.float64]

# Resamples drawn per batch: bounds the index matrix to BATCH x tasks integers.
BATCH = 1024


@dataclass(frozen=True)
class Interval:
    """A point estimate and a two-sided percentile interval around it."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired verdicts: the discordant tasks each way and the
    two-sided exact binomial p-value of the split (1 with no discordant task)."""

    baseline_only: int  # tasks the baseline passes and the other fails
    other_only: int  # tasks the other passes and the baseline fails
    p_value: float


def task_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> FloatArray:
    """Each task's unbiased pass@k from its (samples, correct) counts, in task order."""
    return np.array([pass_at_k(n, c, k) for n, c in counts], dtype=np.float64)


def bootstrap_means(values: FloatArray, resamples: int, seed: int) -> FloatArray:
    """The mean over tasks of each row of `values` [models, tasks] on `resamples` resamples
    of the task ids drawn with replacement, the same resample for every row: [resamples,
    models]. The draws depend only on the seed, the number of tasks and `resamples`."""
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"need values of shape [models, tasks >= 1], got {values.shape}")
    if resamples < 1:
        raise ValueError(f"need at least one resample, got {resamples}")
    rng = np.random.default_rng(seed)
    n_models, n_tasks = values.shape
    means = np.empty((resamples, n_models), dtype=np.float64)
    for start in range(0, resamples, BATCH):
        rows = min(BATCH, resamples - start)
        picks = rng.integers(0, n_tasks, size=(rows, n_tasks))  # [rows, tasks]
        means[start : start + rows] = values[:, picks].mean(axis=2).T  # [models, rows] -> T
    return means


def percentile_interval(estimate: float, draws: FloatArray, level: float) -> Interval:
    """The percentile bootstrap interval: the (1 - level) / 2 and (1 + level) / 2 quantiles
    of the bootstrap draws (linear interpolation, as numpy and scipy compute them)."""
    if not 0 < level < 1:
        raise ValueError(f"need a level in (0, 1), got {level}")
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high))


@dataclass(frozen=True)
class AgainstFirst:
    """Each model's mean with its interval, and each later model's difference from the
    first with its paired interval, all from the same resamples."""

    means: list[Interval]
    differences: list[Interval]


def against_first(
    values: FloatArray, resamples: int, seed: int, level: float = 0.95
) -> AgainstFirst:
    """Per-task values [models, tasks] (the first row the Baseline): each mean over tasks and
    each `mean(row) - mean(first)`, with percentile bootstrap intervals over tasks."""
    means = bootstrap_means(values, resamples, seed)  # [resamples, models]
    estimates = values.mean(axis=1)  # [models]
    return AgainstFirst(
        [percentile_interval(estimates[i], means[:, i], level) for i in range(len(values))],
        [
            percentile_interval(estimates[i] - estimates[0], means[:, i] - means[:, 0], level)
            for i in range(1, len(values))
        ],
    )


def mcnemar_exact(baseline: Sequence[bool], other: Sequence[bool]) -> McNemar:
    """McNemar's exact test: under no difference each discordant task is the baseline's or
    the other's with probability 1/2, so the smaller count is binomial(discordant, 1/2);
    p = min(1, 2 P(X <= smaller)), computed in exact rational arithmetic."""
    if len(baseline) != len(other):
        raise ValueError(f"need paired verdicts, got {len(baseline)} and {len(other)}")
    baseline_only = sum(1 for a, b in zip(baseline, other, strict=True) if a and not b)
    other_only = sum(1 for a, b in zip(baseline, other, strict=True) if b and not a)
    discordant = baseline_only + other_only
    if discordant == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(comb(discordant, i) for i in range(min(baseline_only, other_only) + 1))
    p_value = min(Fraction(1), Fraction(2 * tail, 2**discordant))
    return McNemar(baseline_only, other_only, float(p_value))
