"""Verification stamps: a cheap answer to "is this asset still as it was when verified?"

A full verification re-hashes gigabytes. After one passes, the sizes and modification times
of the asset's files are recorded; `storage status` compares them instead of re-hashing. A
stamp never replaces verification: `verify` always re-checks the bytes.
"""

from __future__ import annotations

from pathlib import Path

from weighted_mtp.clock import utc_now
from weighted_mtp.storage.atomic import read_json_or_none, write_json
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.tree import iter_files


def _fingerprint(layout: Layout, asset_root: Path) -> dict[str, list[int]]:
    files = {}
    for path in iter_files(asset_root):
        stat = path.stat()
        files[layout.relative(path)] = [stat.st_size, stat.st_mtime_ns]
    return files


def record_verified(layout: Layout, asset_root: Path) -> None:
    stamp = {
        "verified_at": utc_now(),
        "files": _fingerprint(layout, asset_root),
    }
    write_json(layout.verification_stamp(asset_root), stamp)


def clear_verified(layout: Layout, asset_root: Path) -> None:
    layout.verification_stamp(asset_root).unlink(missing_ok=True)


def is_verified(layout: Layout, asset_root: Path) -> bool:
    stamp = read_json_or_none(layout.verification_stamp(asset_root), "verification stamp")
    return isinstance(stamp, dict) and stamp.get("files") == _fingerprint(layout, asset_root)
