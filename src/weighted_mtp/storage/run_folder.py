"""Run folders that never lose a file: which folders a run may write, and one run at a time.

A run folder is marked by `run.json` (`RunFolder.identity`: its run kind,
`assets.RUN_KINDS`), the first file a run writes. A run writes only into a folder that is
absent, empty, or, with `--resume`, a run folder of its own kind; anything else is refused
in one line before anything is written, and nothing in it is touched. Inside the storage a
run writes only under its runs folder (`runs/<kind>/<name>`): the rest is the assets `wmtp
verify` checks. A symlink is resolved first and its target judged by the same rules, so the
run writes (and deletes) only inside the resolved folder. While a run writes, it holds the
folder's lock (`RunFolder.lock`, an `flock` like the storage lock: the OS drops it when the
holder dies); a second run is refused naming the holder. Once locked, the temporary names a
killed run left (a partial checkpoint, a partial `final/`, an atomic write's temporary file)
are removed: only a run of this folder makes them. A fresh run that fails before it has
trained anything takes its folder back.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from weighted_mtp import assets
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER, read_json, write_json
from weighted_mtp.storage.layout import Layout, RunFolder
from weighted_mtp.storage.lock import exclusive


class Claim(Enum):
    FRESH = "fresh"  # absent or empty: a new run
    RESUME = "resume"  # a run folder of this kind, continued


@dataclass(frozen=True)
class RunIdentity:
    """What `run.json` records."""

    kind: str
    created: str  # ISO 8601, UTC


def read_identity(folder: Path) -> RunIdentity | None:
    """The run kind `folder` holds, None when it has no `run.json` (one error if malformed)."""
    path = RunFolder(folder).identity
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(path, "run identity")
    if not (isinstance(data, dict) and isinstance(data.get("kind"), str) and "created" in data):
        raise WmtpError(
            "run.json is not a run identity", path=path, hint="restore it or remove the folder"
        )
    return RunIdentity(data["kind"], str(data["created"]))


def _resolved(folder: Path) -> Path:
    """`folder` with `~` and every symlink resolved (a symlinked --out is its target)."""
    try:
        return folder.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise WmtpError(f"cannot resolve the run folder: {exc}", path=folder) from None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _outside_managed_trees(root: Path, layout: Layout) -> None:
    """Refuse a run folder (resolved) inside the storage anywhere but a run's place under
    its runs folder (`runs/<kind>/<name>` or deeper): the rest is what `wmtp build` makes
    and `wmtp verify` checks, and a run there would fail the checklist or be cleaned away."""
    storage, runs = _resolved(layout.root), _resolved(layout.runs_dir)
    if _inside(root, runs) and len(root.relative_to(runs).parts) >= 2:
        return
    if not _inside(root, storage) and not _inside(root, runs):
        return
    where = "the storage's runs folder itself" if _inside(root, runs) else "the storage"
    raise WmtpError(
        f"the run folder is inside {where}, which only wmtp build and wmtp verify manage; "
        "nothing was written",
        path=root,
        hint=f"choose a folder under {layout.runs_dir}/<experiment>/ or outside {layout.root}",
    )


def _entries(root: Path) -> list[str]:
    """What the folder holds besides its lock file (which a killed claim may leave)."""
    lock = RunFolder(root).lock.name
    return sorted(name for name in os.listdir(root) if name != lock)


def _judge(root: Path, kind: str, resume: bool) -> Claim:
    """Whether a `kind` run may write `root` (already resolved); one error if not."""
    if root.exists() and not root.is_dir():
        raise WmtpError("the run folder is a file", path=root, hint="choose a folder for --out")
    empty = not root.exists() or not _entries(root)
    if empty:
        if resume:
            raise WmtpError(
                "nothing to resume: the run folder is empty",
                path=root,
                hint="start the run without --resume",
            )
        return Claim.FRESH
    identity = read_identity(root)
    if identity is None:
        if resume and RunFolder(root).config.is_file():
            return Claim.RESUME  # a run folder made before run.json existed
        raise WmtpError(
            "the folder is not empty and holds no wmtp run (no run.json); nothing in it was "
            "touched",
            path=root,
            hint="choose an empty or new folder for --out",
        )
    if identity.kind != kind:
        raise WmtpError(
            f"the folder holds a {identity.kind} run, not a {kind} run",
            path=root,
            hint=f"choose a new --out for the {kind} run",
        )
    if not resume:
        raise WmtpError(
            f"the folder already holds a {kind} run",
            path=root,
            hint="add --resume to continue it, or choose a new --out",
        )
    return Claim.RESUME


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never its target) or a real folder with what it holds."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(root: Path) -> list[str]:
    """Remove what killed writes left under temporary names in the run folder and its
    checkpoints; only call while holding the folder's lock. Returns their names."""
    folder = RunFolder(root)
    removed = []
    for parent in (folder.root, folder.checkpoints):
        if parent.is_dir() and not parent.is_symlink():
            for entry in sorted(parent.iterdir()):
                if TEMP_MARKER in entry.name:
                    _remove(entry)
                    removed.append(entry.relative_to(root).as_posix())
    return removed


def _give_back(folder: RunFolder, created: bool) -> None:
    """After a fresh run failed: remove what its start wrote, if it wrote nothing else
    (no checkpoint, no metrics), and the folder itself if the run created it."""
    started = {folder.identity, folder.config, folder.checkpoints, folder.metrics}
    present = [folder.root / name for name in _entries(folder.root)]
    if any(p not in started for p in present):
        return
    if folder.checkpoints.is_dir() and any(folder.checkpoints.iterdir()):
        return
    if folder.metrics.is_file() and folder.metrics.stat().st_size:
        return
    for path in present:
        _remove(path)
    folder.lock.unlink(missing_ok=True)
    if created:
        folder.root.rmdir()


@contextmanager
def claim_run_folder(
    folder: Path, kind: str, *, resume: bool, command: str, layout: Layout
) -> Iterator[Path]:
    """Take `folder` for a run of `kind` (a new one, or with `resume` a run of this kind to
    continue) and hold its lock until the run ends. Yields the resolved folder, where the
    run must write. One error, before any write, when the folder is not one the run may
    write (inside `layout`'s storage, only under its runs folder), or another run
    (`command` names this one) holds it."""
    assets.run_kind(kind)  # a known run kind
    root = _resolved(folder)
    _outside_managed_trees(root, layout)
    paths = RunFolder(root)
    if not paths.lock.is_file():  # else a run folder: its lock first (a run may hold it)
        _judge(root, kind, resume)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)

    def refusal(holder: str) -> WmtpError:
        return WmtpError(
            f"another run is writing this run folder: {holder}",
            path=root,
            hint="wait for it to finish, or choose another --out",
        )

    with exclusive(paths.lock, command, refusal):
        claim = _judge(root, kind, resume)  # again, locked: another run may have started
        if not paths.identity.exists():
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            write_json(paths.identity, {"kind": kind, "created": now})
        remove_leftovers(root)
        try:
            yield root
        except BaseException:
            if claim is Claim.FRESH:
                _give_back(paths, created)
            raise
