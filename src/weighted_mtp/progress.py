"""Progress reporting that library code can use without knowing who is watching.

Library functions call `task(...)`; by default nothing is shown. The CLI installs a rich
reporter with `use_reporter`, so long operations get progress bars on a terminal while the
same functions stay silent when called from Python or tests.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[float], None]


class Reporter(Protocol):
    def task(
        self, description: str, total: float | None, unit: str
    ) -> AbstractContextManager[Advance]: ...


class _Silent:
    @contextmanager
    def task(self, description: str, total: float | None, unit: str) -> Iterator[Advance]:
        yield lambda _n: None


_reporter: Reporter = _Silent()


def use_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter if reporter is not None else _Silent()


@contextmanager
def task(description: str, total: float | None = None, unit: str = "items") -> Iterator[Advance]:
    """A unit of long work; `unit="bytes"` shows transfer speed and sizes."""
    with _reporter.task(description, total, unit) as advance:
        yield advance


def note(message: str) -> None:
    """One line the user should read although the work goes on (a damaged checkpoint
    skipped), on stderr whoever is watching: it must not vanish with the progress bars."""
    print(f"note: {message}", file=sys.stderr, flush=True)
