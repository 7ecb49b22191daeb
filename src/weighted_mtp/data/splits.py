"""Which split a task belongs to, and the guard that keeps splits task-disjoint.

Official splits are kept (CodeContests' train/valid/test files, MBPP's task-id ranges,
HumanEval all test). Where a source has none, a task goes where a seeded hash of its
task_id sends it: stable across runs and machines, and every sample of a task lands in
the same split by construction.
"""

from __future__ import annotations

import hashlib

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import SPLITS

HASH_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}

# MBPP's official splits (Austin et al. 2021), as the benchmark names them: tasks 1-10 are
# the few-shot prompt tasks. Evaluation reads these splits.
MBPP_OFFICIAL_RANGES = (
    ((1, 10), "prompt"),
    ((11, 510), "test"),
    ((511, 600), "validation"),
    ((601, 974), "train"),
)
MBPP_OFFICIAL_SPLITS = tuple(split for _range, split in MBPP_OFFICIAL_RANGES)


def hash_split(task_id: str, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in HASH_FRACTIONS.items():
        cumulative += fraction
        if position < cumulative:
            return split
    return SPLITS[-1]


def mbpp_official_split(task_number: int) -> str | None:
    """The official MBPP split of a task (None for a number beyond the benchmark's)."""
    for (low, high), split in MBPP_OFFICIAL_RANGES:
        if low <= task_number <= high:
            return split
    return None


def mbpp_split(task_number: int, seed: int) -> str:
    """The prepared split: the official one, the prompt tasks trained on; a number beyond
    the benchmark's is hash-split."""
    official = mbpp_official_split(task_number)
    if official is None:
        return hash_split(f"mbpp/{task_number}", seed)
    return "train" if official == "prompt" else official


def part_split(part: str, task_id: str, seed: int) -> str:
    """A raw part named like an official split keeps it; any other part is hash-split."""
    return part if part in SPLITS else hash_split(task_id, seed)


class DisjointSplits:
    """Remembers each task's split and refuses a task that shows up in a second split."""

    def __init__(self) -> None:
        self.split_of: dict[str, str] = {}

    def assign(self, task_id: str, split: str) -> str:
        previous = self.split_of.setdefault(task_id, split)
        if previous != split:
            raise WmtpError(
                f"task {task_id!r} appears in both the {previous} and the {split} split",
                hint="splits must be task-disjoint; fix or deduplicate the raw files",
            )
        return split
