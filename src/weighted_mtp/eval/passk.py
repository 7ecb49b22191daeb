"""The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code", in its numerically stable product form."""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k): the chance that at least one of k samples drawn without
    replacement from n (c of them correct) is correct.

    The ratio is computed as prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the
    huge binomials. With fewer than k incorrect samples every draw of k holds a correct one.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    ratio = 1.0
    for i in range(n - c + 1, n + 1):
        ratio *= 1.0 - k / i
    return 1.0 - ratio


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """pass@k averaged over tasks given `(n, c)` per task; None if some task has fewer than
    k samples (the estimate would be undefined there)."""
    counts = list(counts)
    if not counts or any(n < k for n, _c in counts):
        return None
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
