"""Ctrl-C that a C extension's import would swallow.

An interrupt during `import torch` makes Python raise KeyboardInterrupt in whatever Python
code the extension's initialisation runs next, and torch's initialisation catches failures
there (a NumPy import it treats as optional) and carries on: the Ctrl-C is lost and a
30-second demo runs to its end. Inside `keeping_interrupts()`, a SIGINT is remembered and
raised again once the block is done, whatever swallowed it. `wmtp demo` imports torch
this way first: its first seconds are spent there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def keeping_interrupts() -> Iterator[None]:
    """Raise KeyboardInterrupt after the block if a SIGINT arrived during it and was
    swallowed. Only Python's default SIGINT handling in the main thread is replaced."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []

    def remember_and_raise(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, remember_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def import_torch() -> None:
    """`import torch` (seconds long) without losing a Ctrl-C that arrives meanwhile."""
    with keeping_interrupts():
        import torch  # noqa: F401
