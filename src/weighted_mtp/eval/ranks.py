"""Generation under `torchrun --nproc-per-node N`: tasks dealt out to the ranks, results
gathered on the first.

Rank r takes tasks r, r + N, r + 2N, ... of the list (so long and short tasks spread
evenly), and its results travel to rank 0 as Python objects over a gloo process group (the
results are text, whichever device generated them). The group is joined once a rank has
generated, and left right after the gather: rank 0 then scores alone. Gloo has no watchdog,
so a rank that finishes early waits for the slowest (up to `GATHER_TIMEOUT`). One process
(no WORLD_SIZE, or 1) needs no group at all.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
GATHER_TIMEOUT = dt.timedelta(days=2)  # the longest a rank waits for the others
_GATHERS = itertools.count()  # this process's gathers, numbered alike on every rank


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def deal(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items`: every `world`-th, from its own rank on."""
        return list(items[self.rank :: self.world])


def torchrun_ranks() -> Ranks:
    """This process's rank and the number of ranks, as torchrun's environment says."""
    return Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def _join_gather_group() -> None:
    """Join a fresh gloo group for one gather, its keys in torchrun's store under their own
    prefix: torch names every new default group "0", so a group joined after an earlier one
    was left (the suite's training group) would otherwise read that group's stale addresses
    and wait forever. Every rank gathers the same number of times, so the n-th gathers of
    all ranks share a prefix."""
    import torch.distributed as dist
    from torch.distributed import PrefixStore  # type: ignore[attr-defined]  # re-exported C type
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(rendezvous("env://"))
    dist.init_process_group(
        "gloo",
        store=PrefixStore(f"wmtp-eval-gather-{next(_GATHERS)}", store),
        rank=rank,
        world_size=world,
        timeout=GATHER_TIMEOUT,
    )


def gather(ranks: Ranks, mine: T) -> list[T] | None:
    """On rank 0, every rank's `mine` in rank order; None on the others. Joins and leaves
    torchrun's process group (gloo)."""
    if ranks.world == 1:
        return [mine]
    import torch.distributed as dist

    _join_gather_group()
    try:
        shares: list[T | None] | None = [None] * ranks.world if ranks.is_first else None
        dist.gather_object(mine, shares, dst=0)
    finally:
        dist.destroy_process_group()
    return None if shares is None else [share for share in shares if share is not None]


def undeal(shares: list[list[T]]) -> list[T]:
    """Every rank's share of a list (`Ranks.deal`, in rank order) merged back into the
    order they were dealt from."""
    merged: list[T] = []
    for index in range(max((len(share) for share in shares), default=0)):
        merged += [share[index] for share in shares if index < len(share)]
    return merged
