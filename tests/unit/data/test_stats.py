from pathlib import Path

import pytest

from weighted_mtp.data.stats import LengthHistogram, SplitStats, latest_summary, plot_lengths
from weighted_mtp.errors import WmtpError


def test_histogram_statistics_are_exact():
    histogram = LengthHistogram()
    values = [5, 1, 9, 3, 3, 7, 100, 2, 8, 4]
    for value in values:
        histogram.add(value)
    assert histogram.summary() == {"min": 1, "mean": 14.2, "p50": 4, "p95": 100, "max": 100}
    assert LengthHistogram().summary() is None
    binned = histogram.binned(128, bins=4)
    assert binned["bin_width"] == 32 and sum(binned["counts"]) == len(values)
    assert binned["counts"][3] == 1


def test_split_stats_count_kinds():
    stats = SplitStats()
    stats.add_record(10, 5, 17, True, True, False, "python3")
    stats.add_record(12, 6, 20, False, True, False, "python3")
    result = stats.to_dict(max_length=64)
    assert (result["correct"], result["incorrect"], result["shortened"]) == (1, 1, 2)
    assert result["tokens"]["total"]["max"] == 20


def test_plot_and_missing_summary(prepared, tmp_path: Path):
    path, summary = latest_summary(prepared.dataset("codecontests"))
    assert path.name.endswith("_summary.json")
    png = plot_lengths(summary, tmp_path / "lengths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for old in prepared.dataset("mbpp").summaries():
        old.unlink()
    with pytest.raises(WmtpError, match="run `wmtp data prepare mbpp` first"):
        latest_summary(prepared.dataset("mbpp"))
