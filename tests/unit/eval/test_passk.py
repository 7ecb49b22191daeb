"""pass@k against the direct combinatorial definition, by brute force where feasible."""

from __future__ import annotations

import itertools
from math import comb

import pytest

from weighted_mtp.eval.passk import mean_pass_at_k, pass_at_k


def direct(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


def enumerated(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (1, 0, 1),
        (1, 1, 1),
        (5, 0, 1),
        (5, 0, 5),
        (5, 2, 1),
        (5, 2, 3),
        (5, 2, 4),
        (5, 5, 2),
        (6, 1, 6),
        (8, 3, 2),
        (10, 7, 4),
    ],
)
def test_matches_enumeration(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(enumerated(n, c, k), abs=1e-12)


def test_zero_correct_is_zero_and_n_minus_c_below_k_is_one() -> None:
    assert pass_at_k(200, 0, 100) == 0.0
    assert pass_at_k(20, 15, 10) == 1.0  # only 5 incorrect: every 10 holds a correct one
    assert pass_at_k(20, 10, 10) == pytest.approx(direct(20, 10, 10), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(200, 3, 1), (200, 3, 10), (200, 57, 100), (1000, 1, 500)]
)
def test_large_cases_match_exact_binomials(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(direct(n, c, k), rel=1e-10)


def test_pass_at_1_is_the_fraction_correct() -> None:
    assert pass_at_k(20, 7, 1) == pytest.approx(7 / 20)


def test_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)


def test_mean_over_tasks_and_undefined_when_a_task_has_too_few_samples() -> None:
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k([(4, 1), (2, 1)], 3) is None
