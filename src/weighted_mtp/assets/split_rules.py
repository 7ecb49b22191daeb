"""Which split a prepared task belongs to where its benchmark does not say.

Official splits are kept (a benchmark module gives them: CodeContests' train/valid/test
files, MBPP's task-number ranges, HumanEval all test). Where a source has none, a task goes
where a seeded hash of its task_id sends it: stable across runs and machines, and every
sample of a task lands in the same split by construction.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
HASH_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}


def hash_split(task_id: str, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in HASH_FRACTIONS.items():
        cumulative += fraction
        if position < cumulative:
            return split
    return SPLITS[-1]


def part_split(part: str, task_id: str, seed: int) -> str:
    """A raw part named like an official split keeps it; any other part is hash-split."""
    return part if part in SPLITS else hash_split(task_id, seed)
