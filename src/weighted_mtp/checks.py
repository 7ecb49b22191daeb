"""Results of verification: a list of named checks, each passed or failed with a reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def listed(problems: list[str], limit: int = 3) -> str:
    """The first `limit` problems and how many more: one line however many there are."""
    more = len(problems) - limit
    return "; ".join(problems[:limit]) + (f"; and {more} more" if more > 0 else "")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class Report:
    subject: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", files: list[str] | None = None) -> Check:
        check = Check(name, bool(ok), detail, list(files or []))
        self.checks.append(check)
        return check

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}
