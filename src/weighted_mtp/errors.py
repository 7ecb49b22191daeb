"""The one error type for failures a user can act on.

The CLI prints a `WmtpError` as a single line (what went wrong, where, what to do) and exits
with its code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class WmtpError(Exception):
    """A failure caused by input or environment, not by a bug in wmtp."""

    def __init__(
        self,
        what: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
        exit_code: int = 1,
    ) -> None:
        self.what = what
        self.path = str(path) if path is not None else None
        self.hint = hint
        self.exit_code = exit_code
        super().__init__(self.line())

    def line(self) -> str:
        text = self.what
        if self.path:
            text = f"{text} [{self.path}]"
        if self.hint:
            text = f"{text}; {self.hint}"
        return " ".join(text.split())


class UsageError(WmtpError):
    """A command was asked for something it cannot do (unknown name, bad option)."""

    def __init__(self, what: str, *, path: str | Path | None = None, hint: str | None = None):
        super().__init__(what, path=path, hint=hint, exit_code=2)
