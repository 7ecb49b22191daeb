from collections import Counter

import pytest

from weighted_mtp.assets.benchmarks.mbpp import prepared_split as mbpp_split
from weighted_mtp.assets.split_rules import hash_split, part_split
from weighted_mtp.data.splits import DisjointSplits
from weighted_mtp.errors import WmtpError


def test_mbpp_official_ranges():
    assert [mbpp_split(n, 0) for n in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "train",
        "train",
        "test",
        "test",
        "validation",
        "validation",
        "train",
        "train",
    ]


def test_hash_split_is_seeded_stable_and_roughly_proportional():
    ids = [f"task-{i}" for i in range(4000)]
    first = [hash_split(t, 42) for t in ids]
    assert first == [hash_split(t, 42) for t in ids]
    assert first != [hash_split(t, 43) for t in ids]
    counts = Counter(first)
    assert 3400 < counts["train"] < 3800 and counts["validation"] > 100 and counts["test"] > 100


def test_official_part_names_are_kept_others_hashed():
    assert part_split("validation", "x", 1) == "validation"
    assert part_split("code_contests", "x", 1) == hash_split("x", 1)


def test_a_task_in_two_splits_is_refused():
    splits = DisjointSplits()
    splits.assign("a", "train")
    splits.assign("a", "train")
    with pytest.raises(WmtpError, match="'a' appears in both the train and the test split"):
        splits.assign("a", "test")
