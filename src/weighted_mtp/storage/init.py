"""Create the storage layout's folders. Idempotent; never deletes or overwrites."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weighted_mtp.storage.layout import Layout


@dataclass
class InitResult:
    created: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)


def init_storage(layout: Layout) -> InitResult:
    result = InitResult()
    for directory in layout.directories():
        (result.existing if directory.is_dir() else result.created).append(directory)
        directory.mkdir(parents=True, exist_ok=True)
    for placeholder in layout.placeholder_files():
        if placeholder.exists():
            result.existing.append(placeholder)
        else:
            placeholder.touch()
            result.created.append(placeholder)
    return result
