"""What library code tells whoever is watching: progress, status lines and log records.

Library functions call `task(...)` and `status(...)`, and log through `logger` (a module
takes `logging.getLogger(__name__)`, a child of it); by default nothing is shown. The CLI
installs a rich reporter with `use_reporter`, so long operations get progress bars and
status lines on a terminal, and routes the log with `configure_logging` (`-v`/`-q`), while
the same functions stay silent when called from Python or tests.

Log levels: `debug` is what `-v` adds (phases and their durations), `info` a note the user
should read although the work goes on (a killed run's temporary files removed; `-q` hides
it), `warning` what must not be missed (a damaged checkpoint set aside), shown even with
`-q`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Advance(Protocol):
    """Moves a task on by `n` units; `note` is shown beside its bar (a training step's loss)."""

    def __call__(self, n: float, /, note: str = "") -> None: ...


logger = logging.getLogger("weighted_mtp")


class Reporter(Protocol):
    def task(
        self, description: str, total: float | None, unit: str
    ) -> AbstractContextManager[Advance]: ...

    def status(self, description: str) -> AbstractContextManager[None]: ...


class _Silent:
    @contextmanager
    def task(self, description: str, total: float | None, unit: str) -> Iterator[Advance]:
        yield lambda _n, note="": None

    @contextmanager
    def status(self, description: str) -> Iterator[None]:
        yield


_reporter: Reporter = _Silent()


def use_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter if reporter is not None else _Silent()


@contextmanager
def task(description: str, total: float | None = None, unit: str = "items") -> Iterator[Advance]:
    """A unit of long work; `unit="bytes"` shows transfer speed and sizes."""
    with _reporter.task(description, total, unit) as advance:
        yield advance


@contextmanager
def status(description: str) -> Iterator[None]:
    """A phase of long work with no count of its own (loading models, writing `final/`): a
    status line while it runs, and with `-v` a debug line with its duration."""
    start = time.monotonic()
    logger.debug("%s ...", description)
    with _reporter.status(description):
        yield
    logger.debug("%s: done in %.1f s", description, time.monotonic() - start)


def global_rank() -> int:
    """This process's global rank under torchrun (its RANK, across machines); 0 outside."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def configure_logging(handler: logging.Handler, verbosity: int, all_ranks: bool = False) -> None:
    """Send the package's log records to `handler`: verbosity -1 (`-q`) warnings and errors,
    0 notes too, 1 (`-v`) debug lines too. Under torchrun only global rank 0 logs, unless
    `all_ranks`: then every line names its rank."""
    rank = global_rank()
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    if rank != 0 and not all_ranks:
        logger.setLevel(logging.CRITICAL + 1)  # child loggers inherit it: nothing passes
        return
    prefix = f"[rank {rank}] " if all_ranks and "WORLD_SIZE" in os.environ else ""
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    logger.addHandler(handler)


def shows(level: int = logging.INFO) -> bool:
    """Whether this process shows log records of `level` (off with -q, or on a rank that
    stays quiet): progress bars and status lines follow notes."""
    return logger.isEnabledFor(level)
