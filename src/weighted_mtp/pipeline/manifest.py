"""MANIFEST.json: every asset file's path, size and SHA-256, so any later change is named.

The hashes come from the freshness store (`storage.freshness.Store`): hashing a 30 GB storage
takes minutes, so the manifest and SHA256SUMS are written from the hashes the store has
recorded (by downloads, verifications and earlier refreshes), each reused only while its
file keeps the fingerprint it had when hashed; only new or changed files are read. `verify`
re-reads every byte (a store with `trust_known=False`) and records what it read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from weighted_mtp import __version__
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import TEMP_MARKER, read_json, write_json, write_text
from weighted_mtp.storage.clean import PARTIAL_SUFFIXES
from weighted_mtp.storage.freshness import Store
from weighted_mtp.storage.hashing import format_sha256sums, read_sha256sums, sha256_file
from weighted_mtp.storage.layout import CACHE_DIR, STORAGE_VERSION, Layout
from weighted_mtp.storage.tree import iter_files, iter_non_regular

SCHEMA = {
    "type": "object",
    "required": ["storage_version", "created_at", "files"],
    "properties": {
        "storage_version": {"type": "string"},
        "created_at": {"type": "string"},
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "size", "sha256"],
                "properties": {
                    "path": {"type": "string", "minLength": 1},
                    "size": {"type": "integer", "minimum": 0},
                    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
        },
    },
}


def is_leftover(path: Path) -> bool:
    """A temporary file of an interrupted atomic write or download; never an asset."""
    return TEMP_MARKER in path.name or path.name.endswith(PARTIAL_SUFFIXES)


def iter_asset_files(layout: Layout) -> Iterator[Path]:
    """Asset files: everything under the asset folders except caches and leftovers."""
    for top in layout.asset_dirs():
        for path in iter_files(top):
            if CACHE_DIR in path.relative_to(top).parts[:-1] or is_leftover(path):
                continue
            yield path


def non_regular_asset_entries(layout: Layout) -> list[str]:
    """Symlinks and special files in the asset folders (caches excluded): not part of the
    storage, since their bytes live elsewhere or nowhere; never silently left out."""
    return [
        layout.relative(path)
        for top in layout.asset_dirs()
        for path in iter_non_regular(top, CACHE_DIR)
    ]


def iter_leftovers(layout: Layout) -> Iterator[Path]:
    """Temporary files that an interrupted run left in the asset folders (caches excluded)."""
    for top in layout.asset_dirs():
        for path in iter_files(top):
            if CACHE_DIR not in path.relative_to(top).parts[:-1] and is_leftover(path):
                yield path


@dataclass
class ManifestDiff:
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    not_regular: list[str] = field(default_factory=list)  # symlinks, special files

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.unexpected or self.not_regular)

    def files(self) -> list[str]:
        return [*self.changed, *self.missing, *self.unexpected, *self.not_regular]

    def summary(self) -> str:
        parts = [
            f"{len(paths)} {kind}: {', '.join(paths)}"
            for kind, paths in (
                ("changed", self.changed),
                ("missing", self.missing),
                ("unexpected", self.unexpected),
                ("not regular files (symlinks or special files are not storage)", self.not_regular),
            )
            if paths
        ]
        return "; ".join(parts) or "tree matches the manifest"


def current_entries(layout: Layout, store: Store) -> list[dict[str, Any]]:
    """The manifest's entries: every asset file with its hash as the store knows it."""
    return [
        {"path": layout.relative(path), "size": path.stat().st_size, "sha256": store.sha256(path)}
        for path in iter_asset_files(layout)
    ]


def load_manifest(layout: Layout) -> dict[str, Any] | None:
    """The manifest, or None if there is none yet; a malformed one is an error."""
    if not layout.manifest.is_file():
        return None
    data: dict[str, Any] = read_json(layout.manifest, "manifest")  # SCHEMA: an object
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise WmtpError(
            f"manifest entry {where}: {exc.message}",
            path=layout.manifest,
            hint="run `wmtp build` to rewrite it",
        ) from None
    return data


def manifest_sha256(layout: Layout) -> str | None:
    return sha256_file(layout.manifest) if layout.manifest.is_file() else None


@dataclass
class ManifestUpdate:
    """What a refresh recorded: `diff` is the new tree against the previous manifest."""

    written: bool
    diff: ManifestDiff

    def __bool__(self) -> bool:
        return self.written


def _entries_diff(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> ManifestDiff:
    before = {e["path"]: e for e in old}
    after = {e["path"]: e for e in new}
    return ManifestDiff(
        changed=sorted(p for p in before.keys() & after.keys() if before[p] != after[p]),
        missing=sorted(before.keys() - after.keys()),
        unexpected=sorted(after.keys() - before.keys()),
    )


def refresh_manifest(layout: Layout, store: Store | None = None) -> ManifestUpdate:
    """Rewrite MANIFEST.json and SHA256SUMS from the store's hashes if the assets differ
    from them (files the store cannot vouch for are hashed and recorded first)."""
    foreign = non_regular_asset_entries(layout)
    if foreign:
        raise WmtpError(
            f"{len(foreign)} asset path(s) are symlinks or special files, which the storage "
            f"cannot record: {', '.join(foreign[:3])}",
            path=layout.root,
            hint="replace each with a real copy of the file (or delete it), then rerun",
        )
    store = store or Store(layout)
    entries = current_entries(layout, store)
    store.save()
    try:
        old = load_manifest(layout)
    except WmtpError:
        old = None  # a damaged manifest is replaced
    diff = _entries_diff(old["files"] if old else [], entries)
    unchanged = (
        old is not None
        and diff.ok
        and old["storage_version"] == STORAGE_VERSION
        and layout.checksums.is_file()
    )
    if unchanged:
        return ManifestUpdate(False, diff)
    manifest = {
        "storage_version": STORAGE_VERSION,
        "created_at": utc_now(),
        "tool_version": __version__,
        "files": entries,
    }
    write_text(layout.checksums, format_sha256sums((e["path"], e["sha256"]) for e in entries))
    write_json(layout.manifest, manifest)
    return ManifestUpdate(True, diff)


def compare_with_manifest(layout: Layout, manifest: dict[str, Any], store: Store) -> ManifestDiff:
    """Name every file that changed, went missing or appeared since the manifest was written."""
    diff = ManifestDiff()
    recorded = {entry["path"]: entry for entry in manifest["files"]}
    present = {layout.relative(path): path for path in iter_asset_files(layout)}
    for rel, entry in recorded.items():
        path = present.get(rel)
        if path is None:
            diff.missing.append(rel)
        elif path.stat().st_size != entry["size"] or store.sha256(path) != entry["sha256"]:
            diff.changed.append(rel)
    diff.unexpected = sorted(set(present) - set(recorded))
    diff.not_regular = non_regular_asset_entries(layout)
    store.save()
    return diff


def sha256sums_mismatches(layout: Layout, sums: Path, store: Store) -> tuple[int, list[str]]:
    """(entries, names of files that are missing, outside the root or different) of a
    `sha256sum -c` file; an unreadable one raises WmtpError."""
    entries = read_sha256sums(sums)
    bad = []
    for name, expected in entries.items():
        target = Path(os.path.normpath(sums.parent / name))
        inside = layout.contains(target)
        if not (inside and target.is_file() and store.sha256(target) == expected):
            bad.append(layout.relative(target) if inside else name)
    return len(entries), bad
