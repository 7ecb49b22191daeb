"""`wmtp backup DEST`: a verified copy of the storage that is a storage root on its own.

Hard links share their bytes with the original, so one bad write damages both: every file is
copied. Caches, partial downloads, temporary files and the build lock are left out. A rerun
resumes: files already complete in DEST (same size and mtime, not a link to the source) are
not copied again. Every asset file's copy is then read back from DEST and compared with
MANIFEST.json, every other file (manifest, reports, approvals, bookkeeping) with the
source's bytes. Only then is the backup recorded, in BACKUPS.json of both roots, so
`wmtp --root DEST verify` sees DEST as the verified backup it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp import progress
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.backup_record import load_backups
from weighted_mtp.pipeline.manifest import is_leftover, load_manifest, manifest_sha256
from weighted_mtp.storage.atomic import atomic_write, ensure_free_space, write_json
from weighted_mtp.storage.hashing import CHUNK_SIZE, HashingWriter, sha256_file
from weighted_mtp.storage.layout import CACHE_DIR, Layout
from weighted_mtp.storage.lock import storage_lock
from weighted_mtp.storage.tree import iter_files


@dataclass(frozen=True)
class BackupResult:
    dest: Path
    files: int
    copied: int  # files copied by this run; the others were already complete in DEST
    size: int  # bytes in the backup
    copied_size: int
    seconds: float
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The backups record's entry with what this run copied (`--json`)."""
        return {**self.record, "copied_files": self.copied, "seconds": self.seconds}


def _files_to_copy(layout: Layout) -> list[Path]:
    """Everything under the root but caches, partial downloads, temporary files, the lock
    and the backups record (written last)."""
    skipped = {layout.build_lock, layout.backups}
    return [
        path
        for path in iter_files(layout.root)
        if CACHE_DIR not in path.relative_to(layout.root).parts[:-1]
        and not is_leftover(path)
        and path not in skipped
    ]


def _check_destination(layout: Layout, dest: Path) -> None:
    if dest == layout.root or dest.is_relative_to(layout.root):
        raise WmtpError(
            "the backup folder is inside the storage it backs up",
            path=dest,
            hint="choose a folder outside the storage root, ideally on another disk",
        )
    if layout.root.is_relative_to(dest):
        raise WmtpError("the storage root is inside the backup folder", path=dest)
    if dest.exists() and not dest.is_dir():
        raise WmtpError("the backup destination is not a folder", path=dest)
    if dest.is_dir() and any(dest.iterdir()) and not Layout(dest).manifest.is_file():
        raise WmtpError(
            "the backup folder holds files but no storage",
            path=dest,
            hint="give an empty folder or an earlier backup of this storage",
        )


def _expected_hashes(layout: Layout, files: list[Path]) -> dict[Path, str]:
    """Each file's SHA-256 as it must arrive: the manifest's for assets (the storage must
    match its manifest, so a stale one is refused), the source's bytes for the rest."""
    manifest = load_manifest(layout)
    if manifest is None:
        raise WmtpError(
            "the storage has no MANIFEST.json to verify a backup against",
            path=layout.manifest,
            hint="run `wmtp build` first",
        )
    recorded = {e["path"]: e["sha256"] for e in manifest["files"]}
    asset_tops = tuple(layout.relative(top) + "/" for top in layout.asset_dirs())
    expected = {}
    for path in files:
        rel = layout.relative(path)
        if rel.startswith(asset_tops):
            if rel not in recorded:
                raise WmtpError(
                    f"{rel} is not in MANIFEST.json",
                    path=path,
                    hint="run `wmtp build` to record it, then back up",
                )
            expected[path] = recorded.pop(rel)
        else:
            expected[path] = sha256_file(path)
    if recorded:
        missing = sorted(recorded)
        raise WmtpError(
            f"{len(missing)} file(s) of MANIFEST.json are missing, e.g. {missing[0]}",
            hint="run `wmtp build` to restore them, then back up",
        )
    return expected


def _complete_copy(source: Path, target: Path) -> bool:
    """A copy from an earlier run: same size and mtime, and its own bytes (not a link)."""
    if not target.is_file() or target.is_symlink() or os.path.samefile(source, target):
        return False
    a, b = source.stat(), target.stat()
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def _copy(source: Path, target: Path, expected: str, advance: progress.Advance, rel: str) -> None:
    """Copy bytes atomically, keeping the mtime; the source must hash to `expected`."""
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with source.open("rb", buffering=0) as src, atomic_write(target, "wb") as handle:
        out = HashingWriter(handle)
        while n := src.readinto(buffer):
            out.write(view[:n])
            advance(n)
        if out.hexdigest() != expected:
            raise WmtpError(
                f"{rel} differs from MANIFEST.json in the storage itself",
                path=source,
                hint="run `wmtp verify`, repair with `wmtp build`, then back up",
            )
    stat = source.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _verify_copy(layout: Layout, dest: Path, expected: dict[Path, str]) -> None:
    """Read every copy back from DEST and compare it with what it must hold."""
    total = sum(path.stat().st_size for path in expected)
    with progress.task("verify backup", total, "bytes") as advance:
        for source, digest in expected.items():
            rel = layout.relative(source)
            if sha256_file(dest / rel) != digest:
                raise WmtpError(
                    f"the backup's copy of {rel} differs from the storage",
                    path=dest / rel,
                    hint="check the backup disk, then run `wmtp backup` again",
                )
            advance(source.stat().st_size)


def backup(layout: Layout, dest: str | Path) -> BackupResult:
    """Copy the storage to `dest`, verify the copy and record it (resumable). Holds the
    storage lock, so no build changes the storage while it is copied."""
    dest = Path(dest).expanduser().absolute()
    _check_destination(layout, dest)
    with storage_lock(layout, "wmtp backup"):
        return _backup_locked(layout, dest)


def _backup_locked(layout: Layout, dest: Path) -> BackupResult:
    started = time.monotonic()
    files = _files_to_copy(layout)
    expected = _expected_hashes(layout, files)
    pending = [p for p in files if not _complete_copy(p, dest / layout.relative(p))]
    pending_size = sum(p.stat().st_size for p in pending)
    ensure_free_space(dest, pending_size, "the backup")
    for folder in layout.directories():  # the layout's empty folders too (e.g. micro raw/)
        (dest / layout.relative(folder)).mkdir(parents=True, exist_ok=True)
    with progress.task(f"copy to {dest}", pending_size, "bytes") as advance:
        for path in pending:
            rel = layout.relative(path)
            _copy(path, dest / rel, expected[path], advance, rel)
    _verify_copy(layout, dest, expected)
    size = sum(p.stat().st_size for p in files)
    record = {
        "dest": str(dest),
        "source": str(layout.root),
        "at": utc_now(),
        "manifest_sha256": manifest_sha256(layout),
        "files": len(files),
        "bytes": size,
        "verified": "every file read back from the backup and compared",
    }
    write_json(layout.backups, {"backups": [*load_backups(layout), record]})
    write_json(Layout(dest).backups, {"backups": [*load_backups(layout)]})
    seconds = time.monotonic() - started
    return BackupResult(dest, len(files), len(pending), size, pending_size, seconds, record)
