"""Remove the storage's asset folders for a clean start, but never an ongoing download.

Kept whatever happens: every `.cache` folder, partial download files, the Meta 7B raw
checkpoint folder, and paths the user names with `--keep`. Symlinks are removed as links,
never followed, so nothing outside the root can be touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import CACHE_DIR, Layout
from weighted_mtp.storage.tree import tree_size

PARTIAL_SUFFIXES = (".incomplete", ".part", ".partial", ".download", ".aria2")


@dataclass
class CleanPlan:
    remove: list[tuple[Path, int]] = field(default_factory=list)
    keep: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def bytes_to_free(self) -> int:
        return sum(size for _, size in self.remove)


def _norm(path: Path) -> Path:
    return Path(os.path.normpath(path.absolute()))


def _keep_reason(path: Path, protected: dict[Path, str]) -> str | None:
    if path in protected:
        return protected[path]
    if path.is_symlink():
        return None
    if path.name == CACHE_DIR and path.is_dir():
        return "cache folder"
    if path.is_file() and path.name.endswith(PARTIAL_SUFFIXES):
        return "partial download"
    return None


def _plan_path(path: Path, protected: dict[Path, str], plan: CleanPlan) -> bool:
    """Add `path` to the plan; True if it is removed whole."""
    reason = _keep_reason(path, protected)
    if reason:
        plan.keep.append((path, reason))
        return False
    if path.is_symlink() or not path.is_dir():
        plan.remove.append((path, 0 if path.is_symlink() else path.stat().st_size))
        return True
    mark = len(plan.remove)
    children = sorted(path.iterdir())
    whole = all([_plan_path(child, protected, plan) for child in children])
    if whole:
        del plan.remove[mark:]
        plan.remove.append((path, tree_size(path)))
    return whole


def plan_clean(
    layout: Layout, *, legacy: bool = False, keep: Iterable[str | Path] = ()
) -> CleanPlan:
    """What `clean` would remove and keep; touches nothing."""
    protected = {_norm(p): "ongoing 7B download" for p in layout.protected_paths()}
    for raw in keep:
        path = _norm(Path(raw))
        if layout.root not in path.parents:
            raise WmtpError(
                "--keep path is outside the storage root",
                path=raw,
                hint=f"give a path under {layout.root}",
            )
        protected[path] = "--keep"
    targets = layout.asset_dirs() + (layout.legacy_dirs() if legacy else [])
    plan = CleanPlan()
    for target in targets:
        if target.exists() or target.is_symlink():
            _plan_path(_norm(target), protected, plan)
    return plan


def execute_clean(layout: Layout, plan: CleanPlan) -> None:
    for path, _ in plan.remove:
        if layout.root not in path.parents:
            raise WmtpError("refusing to remove a path outside the storage root", path=path)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
