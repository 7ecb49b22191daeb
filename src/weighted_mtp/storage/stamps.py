"""The freshness store: a cheap, exact answer to "is this asset still as it was verified?"

A full verification re-hashes gigabytes. After one passes, every file of the asset is
recorded with its fingerprint (size, modification time, inode), together with the
fingerprints of the files it was built from (`inputs`, outside its folder) and the time of
the verification. `is_current` compares them instead of re-hashing; `storage status` and
`wmtp build` ask it. It compares size and mtime: a storage copied with its times (`cp -a`,
`rsync -a`, a restored backup) stays verified. The same fingerprints, inode included,
decide when a known SHA-256 in the hash cache may be reused (`pipeline.manifest.Hasher`):
a hash describes the bytes of one file on disk, and a rewrite through a temporary file and
a rename changes the inode even when size and mtime come out equal. A stamp never replaces
verification: `wmtp verify` always re-checks the bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from weighted_mtp.clock import utc_now
from weighted_mtp.storage.atomic import read_json_or_none, write_json
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.tree import iter_files

Fingerprint = list[int]  # [size, mtime_ns, inode]


def fingerprint(stat: os.stat_result) -> Fingerprint:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def unchanged(recorded: Any, stat: os.stat_result, *, same_inode: bool = True) -> bool:
    """Whether a recorded fingerprint still describes the file. Records without an inode
    (e.g. a download's SOURCE.json) and `same_inode=False` compare size and mtime."""
    if not isinstance(recorded, list) or len(recorded) < 2:
        return False
    compared = len(recorded) if same_inode else 2
    return recorded[:compared] == fingerprint(stat)[:compared]


def _fingerprints(layout: Layout, paths: Iterable[Path]) -> dict[str, Fingerprint]:
    return {layout.relative(path): fingerprint(path.stat()) for path in paths if path.is_file()}


def record_verified(layout: Layout, asset_root: Path, inputs: Iterable[Path] = ()) -> None:
    """Stamp `asset_root` as verified now, built from `inputs` as they are now."""
    stamp = {
        "verified_at": utc_now(),
        "files": _fingerprints(layout, iter_files(asset_root)),
        "inputs": _fingerprints(layout, inputs),
    }
    write_json(layout.verification_stamp(asset_root), stamp)


def clear_verified(layout: Layout, asset_root: Path) -> None:
    layout.verification_stamp(asset_root).unlink(missing_ok=True)


def _still(layout: Layout, recorded: Any, paths: Iterable[Path]) -> bool:
    current = {layout.relative(path): path for path in paths if path.is_file()}
    return (
        isinstance(recorded, dict)
        and recorded.keys() == current.keys()
        and all(
            unchanged(recorded[rel], path.stat(), same_inode=False) for rel, path in current.items()
        )
    )


def is_current(layout: Layout, asset_root: Path) -> bool:
    """The asset passed verification and neither it nor its inputs changed since."""
    stamp = read_json_or_none(layout.verification_stamp(asset_root), "verification stamp")
    if not isinstance(stamp, dict) or not _still(
        layout, stamp.get("files"), iter_files(asset_root)
    ):
        return False
    inputs = stamp.get("inputs", {})
    paths = [layout.root / rel for rel in inputs] if isinstance(inputs, dict) else []
    return _still(layout, inputs, paths)
