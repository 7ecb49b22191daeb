"""BACKUPS.json: the verified copies of a storage (where, when, of which manifest).

Kept apart from the copying (`pipeline.backup`) so the checklist can read it without
importing the build.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.manifest import manifest_sha256
from weighted_mtp.storage.atomic import read_json
from weighted_mtp.storage.layout import Layout

BACKUP_HINT = "run `wmtp backup DEST` (a folder on another disk)"


def load_backups(layout: Layout) -> list[dict[str, Any]]:
    if not layout.backups.is_file():
        return []
    data = read_json(layout.backups, "backups file")
    backups = data.get("backups") if isinstance(data, dict) else None
    if not isinstance(backups, list) or not all(isinstance(b, dict) for b in backups):
        raise WmtpError(
            "backups file has no list of backups",
            path=layout.backups,
            hint=f"delete it and {BACKUP_HINT}",
        )
    return backups


def backup_status(
    layout: Layout, differs_from_manifest: Sequence[str] = ()
) -> tuple[bool, str, list[str]]:
    """(current?, explanation, files): a verified backup of the current manifest exists.
    Files that differ from the manifest make even a backup of it stale."""
    rel = layout.relative(layout.backups)
    try:
        backups = load_backups(layout)
    except WmtpError as exc:
        return False, exc.line(), [rel]
    current = manifest_sha256(layout)
    matching = [b for b in backups if current and b.get("manifest_sha256") == current]
    if matching and not differs_from_manifest:
        latest = matching[-1]
        if Path(str(latest.get("dest"))) == layout.root:
            return True, f"this is the verified backup of {latest.get('source')}", []
        return True, f"verified backup at {latest.get('dest')} ({latest.get('at')})", []
    if not backups:
        return False, f"no backup yet; {BACKUP_HINT}", [rel]
    latest = backups[-1]
    detail = f"the latest backup ({latest.get('dest')}, {latest.get('at')}) is of an earlier state"
    return False, f"{detail}; {BACKUP_HINT}", sorted(differs_from_manifest) or [rel]
