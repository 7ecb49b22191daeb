"""Size limits on untrusted input, so hostile files cost bounded memory and time.

Each limit has a default that real data stays far below and an environment variable that
raises it for the rare real case; a limit that is hit names its variable in the error.
Values are read when a reader starts, so a test or a user can change them per run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from weighted_mtp.errors import WmtpError


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 64 << 20  # one JSONL line (a CodeContests row with its tests)
    max_text_chars: int = 1 << 20  # one text that is tokenized (a statement, a solution)
    max_gzip_ratio: int = 200  # expanded / compressed size of a .gz file ...
    min_gzip_allowance: int = 64 << 20  # ... that may always expand to this much
    max_decompressed_bytes: int = 64 << 30  # whatever the ratio


ENV_VARS = {
    "max_line_bytes": "WMTP_MAX_LINE_BYTES",
    "max_text_chars": "WMTP_MAX_TEXT_CHARS",
    "max_gzip_ratio": "WMTP_MAX_GZIP_RATIO",
    "min_gzip_allowance": "WMTP_MIN_GZIP_ALLOWANCE",
    "max_decompressed_bytes": "WMTP_MAX_DECOMPRESSED_BYTES",
}


def positive_int_setting(variable: str, default: int) -> int:
    """An integer > 0 from the environment (`_` separators allowed), else `default`."""
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise WmtpError(f"{variable}={raw!r} is not a positive integer", hint=f"unset {variable}")
    return value


def current_limits() -> Limits:
    """The limits in force: defaults, raised or lowered by the WMTP_MAX_* variables."""
    defaults = Limits()
    return Limits(
        **{
            f.name: positive_int_setting(ENV_VARS[f.name], getattr(defaults, f.name))
            for f in fields(Limits)
        }
    )


def raise_hint(name: str, value: int) -> str:
    """How to raise limit `name` (now `value`) if the input is genuine."""
    return f"if the input is genuine, set {ENV_VARS[name]} above {value}"
