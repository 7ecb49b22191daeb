"""The comparison's figure: one row per dataset; left, each run's pass@k with its interval;
right, each run's difference against the Baseline with its paired interval and a line at 0."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from weighted_mtp.figures import png_bytes, pyplot
from weighted_mtp.storage.atomic import write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from weighted_mtp.eval.compare import Comparison, DatasetComparison
    from weighted_mtp.eval.statistics import Interval


def _errors(intervals: list[Interval]) -> list[list[float]]:
    """matplotlib's asymmetric error bars: distances below and above each estimate."""
    return [
        [i.estimate - i.low for i in intervals],
        [i.high - i.estimate for i in intervals],
    ]


def _scores(ax: Axes, d: DatasetComparison, labels: list[str]) -> None:
    width = 0.8 / len(labels)
    ks = list(d.pass_at_k)
    for r, label in enumerate(labels):
        intervals = [d.pass_at_k[k][r] for k in ks]
        ax.bar(
            [x + (r - (len(labels) - 1) / 2) * width for x in range(len(ks))],
            [i.estimate for i in intervals],
            width,
            yerr=_errors(intervals),
            capsize=3,
            color=f"C{r % 10}",
            label=label,
        )
    ax.set_xticks(range(len(ks)), [f"pass@{k}" for k in ks])
    ax.set_ylim(0, 1)
    ax.set_title(f"{d.dataset}: pass@k ({len(d.tasks)} tasks)")
    ax.legend(fontsize=7)


def _differences(ax: Axes, d: DatasetComparison, labels: list[str]) -> None:
    ks = list(d.differences)
    for r in range(1, len(labels)):  # each run in its colour on the left, one row per k
        intervals = [d.differences[k][r - 1] for k in ks]
        ax.errorbar(
            [i.estimate for i in intervals],
            [(r - 1) * len(ks) + j for j in range(len(ks))],
            xerr=_errors(intervals),
            fmt="o",
            capsize=3,
            color=f"C{r % 10}",
        )
    ax.axvline(0, color="black", linewidth=0.8)
    names = [f"{label} pass@{k}" for label in labels[1:] for k in ks]
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_title(f"{d.dataset}: difference against {labels[0]}")
    ax.grid(axis="x", alpha=0.3)


def plot_comparison(comparison: Comparison, out: Path) -> Path:
    """Written atomically as PNG."""
    rows = len(comparison.datasets)
    fig, axes = pyplot().subplots(rows, 2, figsize=(12, 3.5 * rows), squeeze=False)
    for (ax_scores, ax_differences), d in zip(axes, comparison.datasets, strict=True):
        _scores(ax_scores, d, comparison.labels)
        _differences(ax_differences, d, comparison.labels)
    write_bytes(out, png_bytes(fig))
    return out
