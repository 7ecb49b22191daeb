"""The guard that keeps prepared splits task-disjoint.

Which split a task belongs to is its benchmark's rule (`weighted_mtp.assets.benchmarks`),
or a seeded hash of its task id (`weighted_mtp.assets.split_rules`).
"""

from __future__ import annotations

from weighted_mtp.errors import WmtpError


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
