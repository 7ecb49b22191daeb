"""Small, seeded subsets of the processed splits for quick experiments on a laptop.

Records are ranked by a seeded hash of their sample_id and the lowest ranks kept, correct
and incorrect ones separately so both kinds are present wherever the split has both; only
`limit` records per kind are ever held. Drawn from task-disjoint splits, the small splits
are task-disjoint too.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from pathlib import Path
from typing import Any

from weighted_mtp.data.sources import record_field
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import write_text
from weighted_mtp.storage.jsonl import iter_jsonl
from weighted_mtp.storage.layout import SPLITS, Layout

SMALL_LIMITS = {"train": 100, "validation": 32, "test": 32}


def _rank(seed: int, sample_id: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest(), "big"
    )


def _lowest_ranked(path: Path, seed: int, limit: int) -> dict[bool, list[tuple[int, str]]]:
    """Up to `limit` lowest-ranked (rank, line) pairs for correct and for incorrect records."""
    heaps: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
    for line, record in iter_jsonl(path):
        heap = heaps[record_field(record, "metadata.is_correct", path, line)]
        rank = _rank(seed, record_field(record, "metadata.sample_id", path, line))
        entry = (-rank, json.dumps(record, ensure_ascii=False))
        if len(heap) < limit:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)
    return {kind: sorted((-neg, line) for neg, line in heap) for kind, heap in heaps.items()}


def select(path: Path, seed: int, limit: int) -> tuple[list[str], int]:
    """(lines, how many are correct): half correct, half incorrect where possible, the rest
    filled from whichever kind has more."""
    ranked = _lowest_ranked(path, seed, limit)
    correct, incorrect = ranked[True], ranked[False]
    take_incorrect = min(len(incorrect), max(limit // 2, limit - len(correct)))
    take_correct = min(len(correct), limit - take_incorrect)
    chosen = sorted(correct[:take_correct] + incorrect[:take_incorrect])
    return [line for _rank_value, line in chosen], take_correct


def build_small(layout: Layout, name: str, *, seed: int = 42) -> dict[str, Any]:
    """Write `datasets_local_small/<name>_small/<split>_small.jsonl`; returns counts. The
    freshness store records the set as made from the processed splits as they are now."""
    paths, small = layout.dataset(name), layout.small(name)
    present = [split for split in SPLITS if paths.split(split).is_file()]
    if not present:
        raise WmtpError(
            f"dataset {name!r} has no processed splits",
            path=paths.processed,
            hint=f"run `wmtp data prepare {name}` first",
        )
    result = {}
    for split in SPLITS:
        target = small.split(split)
        if split not in present:
            target.unlink(missing_ok=True)
            continue
        lines, correct = select(paths.split(split), seed, SMALL_LIMITS[split])
        write_text(target, "".join(line + "\n" for line in lines))
        result[split] = {
            "path": layout.relative(target),
            "records": len(lines),
            "correct": correct,
            "incorrect": len(lines) - correct,
        }
    freshness.record_verified(layout, freshness.small_key(name), built_now=True)
    return result
