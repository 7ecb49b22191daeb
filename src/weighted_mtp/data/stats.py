"""Per-split counts and token-length statistics, kept in bounded memory.

Lengths never exceed --max-length after preparation, so a per-length counter is a small,
exact histogram: min/mean/percentiles come out exact without holding the lengths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.figures import png_bytes, pyplot
from weighted_mtp.storage.atomic import read_json, write_bytes
from weighted_mtp.storage.layout import DatasetPaths

PLOT_BINS = 64
LENGTH_KINDS = ("prompt", "response", "total")


@dataclass
class LengthHistogram:
    counts: Counter[int] = field(default_factory=Counter)

    def add(self, length: int) -> None:
        counts = self.counts
        counts[length] = counts.get(length, 0) + 1

    def summary(self) -> dict[str, float] | None:
        total = sum(self.counts.values())
        if not total:
            return None
        lengths = sorted(self.counts)
        mean = sum(n * c for n, c in self.counts.items()) / total
        return {
            "min": lengths[0],
            "mean": round(mean, 2),
            "p50": self._percentile(0.50),
            "p95": self._percentile(0.95),
            "max": lengths[-1],
        }

    def _percentile(self, q: float) -> int:
        """The nearest-rank percentile: the smallest length with >= q of samples at or below."""
        total = sum(self.counts.values())
        rank = max(1, -(-q * total // 1))
        seen = 0
        for length in sorted(self.counts):
            seen += self.counts[length]
            if seen >= rank:
                return length
        return max(self.counts)

    def binned(self, max_length: int, bins: int = PLOT_BINS) -> dict[str, Any]:
        width = max(1, -(-max_length // bins))
        counts = [0] * (max_length // width + 1)
        for length, count in self.counts.items():
            counts[min(length // width, len(counts) - 1)] += count
        return {"bin_width": width, "counts": counts}


@dataclass
class SplitStats:
    records: int = 0
    tasks: int = 0  # with at least one record
    correct: int = 0
    incorrect: int = 0
    dropped: int = 0
    shortened: int = 0
    truncated: int = 0
    duplicates: int = 0
    cross_split_duplicates: int = 0
    languages: Counter[str] = field(default_factory=Counter)
    lengths: dict[str, LengthHistogram] = field(
        default_factory=lambda: {kind: LengthHistogram() for kind in LENGTH_KINDS}
    )

    def add_record(
        self,
        prompt: int,
        response: int,
        total: int,
        is_correct: bool,
        shortened: bool,
        truncated: bool,
        language: str,
    ) -> None:
        self.records += 1
        if is_correct:
            self.correct += 1
        else:
            self.incorrect += 1
        self.shortened += shortened
        self.truncated += truncated
        self.languages[language] += 1
        for kind, value in zip(LENGTH_KINDS, (prompt, response, total), strict=True):
            self.lengths[kind].add(value)

    def to_dict(self, max_length: int) -> dict[str, Any]:
        return {
            "records": self.records,
            "tasks": self.tasks,
            "correct": self.correct,
            "incorrect": self.incorrect,
            "dropped": self.dropped,
            "shortened": self.shortened,
            "truncated": self.truncated,
            "duplicates": self.duplicates,
            "cross_split_duplicates": self.cross_split_duplicates,
            "languages": dict(sorted(self.languages.items())),
            "tokens": {kind: hist.summary() for kind, hist in self.lengths.items()},
            "total_histogram": self.lengths["total"].binned(max_length),
        }


def latest_summary(paths: DatasetPaths) -> tuple[Path, dict[str, Any]]:
    summaries = paths.summaries()
    if not summaries:
        raise WmtpError(
            f"dataset {paths.name!r} has no summary",
            path=paths.stats,
            hint=f"run `wmtp data prepare {paths.name}` first",
        )
    return summaries[-1], read_json(summaries[-1], "dataset summary")


def plot_lengths(summary: dict[str, Any], out: str | Path) -> Path:
    """A PNG histogram of total token lengths, one series per split."""
    out = Path(out)
    figure, axes = pyplot().subplots(figsize=(8, 4.5))
    for split, entry in summary["splits"].items():
        histogram = entry["total_histogram"]
        width = histogram["bin_width"]
        edges = [i * width for i in range(len(histogram["counts"]))]
        axes.bar(
            edges,
            histogram["counts"],
            width=width,
            align="edge",
            alpha=0.5,
            label=f"{split} ({entry['records']})",
        )
    axes.set_xlabel("tokens (BOS + prompt + response + EOS)")
    axes.set_ylabel("records")
    axes.set_title(f"{summary['dataset']}: token lengths (max {summary['max_length']})")
    axes.legend()
    write_bytes(out, png_bytes(figure))
    return out
