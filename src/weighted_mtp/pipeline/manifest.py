"""MANIFEST.json: every asset file's path, size and SHA-256, so any later change is named.

Hashing a 30 GB storage takes minutes, so hashes are remembered in `.wmtp/hashes.json` with
the fingerprint (size, mtime, inode: `storage.stamps`) each file had when hashed. Refreshing
the manifest after a build step reuses them while the fingerprint holds; `verify` re-reads
every byte (`trust_known=False`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from weighted_mtp import __version__
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage import stamps
from weighted_mtp.storage.atomic import (
    TEMP_MARKER,
    read_json,
    read_json_or_none,
    write_json,
    write_text,
)
from weighted_mtp.storage.clean import PARTIAL_SUFFIXES
from weighted_mtp.storage.hashing import format_sha256sums, read_sha256sums, sha256_file
from weighted_mtp.storage.layout import BASE_MODELS, CACHE_DIR, STORAGE_VERSION, Layout
from weighted_mtp.storage.tree import iter_files, iter_non_regular

SHOW_PROGRESS_FROM = 64 << 20

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
    """Asset files: everything under the v2 folders except caches and leftovers."""
    for top in layout.v2_dirs():
        for path in iter_files(top):
            if CACHE_DIR in path.relative_to(top).parts[:-1] or is_leftover(path):
                continue
            yield path


def non_regular_asset_entries(layout: Layout) -> list[str]:
    """Symlinks and special files in the asset folders (caches excluded): not part of the
    storage, since their bytes live elsewhere or nowhere; never silently left out."""
    return [
        layout.relative(path)
        for top in layout.v2_dirs()
        for path in iter_non_regular(top, CACHE_DIR)
    ]


def iter_leftovers(layout: Layout) -> Iterator[Path]:
    """Temporary files that an interrupted run left in the asset folders (caches excluded)."""
    for top in layout.v2_dirs():
        for path in iter_files(top):
            if CACHE_DIR not in path.relative_to(top).parts[:-1] and is_leftover(path):
                yield path


class Hasher:
    """SHA-256 of storage files, each read at most once per run."""

    def __init__(self, layout: Layout, *, trust_known: bool) -> None:
        self.layout = layout
        self.trust_known = trust_known
        self._known: dict[str, list] = self._load()
        self._this_run: set[str] = set()

    def _load(self) -> dict[str, list]:
        known = self._from_downloads()
        data = read_json_or_none(self.layout.hash_cache, "hash cache")  # lost: re-hash
        known.update(data if isinstance(data, dict) else {})
        return known

    def _from_downloads(self) -> dict[str, list]:
        """Model downloads record each file's hash with its size and mtime (SOURCE.json):
        the 15 GB checkpoint is hashed while it is copied, not once more afterwards."""
        known = {}
        for name in BASE_MODELS:
            paths = self.layout.model(name)
            try:
                files = read_json(paths.source, "SOURCE.json").get("files", {})
            except WmtpError:
                continue
            for rel, entry in files.items() if isinstance(files, dict) else ():
                if isinstance(entry, dict) and {"size", "mtime_ns", "sha256"} <= entry.keys():
                    known[self.layout.relative(paths.file(rel))] = [
                        entry["size"],
                        entry["mtime_ns"],
                        entry["sha256"],
                    ]
        return known

    def sha256(self, path: Path) -> str:
        rel = self.layout.relative(path)
        stat = path.stat()
        entry = self._known.get(rel)  # [*fingerprint, sha256]
        current = isinstance(entry, list) and stamps.unchanged(entry[:-1], stat)
        if entry is not None and current and (self.trust_known or rel in self._this_run):
            return str(entry[-1])
        digest = sha256_file(path, show_progress=stat.st_size >= SHOW_PROGRESS_FROM)
        self._known[rel] = [*stamps.fingerprint(stat), digest]
        self._this_run.add(rel)
        return digest

    def forget(self, rels: list[str]) -> None:
        """Drop known hashes, so these files are read again."""
        for rel in rels:
            self._known.pop(rel, None)

    def save(self) -> None:
        """Persist known hashes of files that still exist."""
        kept = {rel: e for rel, e in self._known.items() if (self.layout.root / rel).is_file()}
        write_json(self.layout.hash_cache, kept)


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


def current_entries(layout: Layout, hasher: Hasher) -> list[dict]:
    return [
        {"path": layout.relative(path), "size": path.stat().st_size, "sha256": hasher.sha256(path)}
        for path in iter_asset_files(layout)
    ]


def load_manifest(layout: Layout) -> dict | None:
    """The manifest, or None if there is none yet; a malformed one is an error."""
    if not layout.manifest.is_file():
        return None
    data = read_json(layout.manifest, "manifest")
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


def _entries_diff(old: list[dict], new: list[dict]) -> ManifestDiff:
    before = {e["path"]: e for e in old}
    after = {e["path"]: e for e in new}
    return ManifestDiff(
        changed=sorted(p for p in before.keys() & after.keys() if before[p] != after[p]),
        missing=sorted(before.keys() - after.keys()),
        unexpected=sorted(after.keys() - before.keys()),
    )


def refresh_manifest(layout: Layout, hasher: Hasher | None = None) -> ManifestUpdate:
    """Rewrite MANIFEST.json and SHA256SUMS if the assets differ from them."""
    foreign = non_regular_asset_entries(layout)
    if foreign:
        raise WmtpError(
            f"{len(foreign)} asset path(s) are symlinks or special files, which the storage "
            f"cannot record: {', '.join(foreign[:3])}",
            path=layout.root,
            hint="replace each with a real copy of the file (or delete it), then rerun",
        )
    hasher = hasher or Hasher(layout, trust_known=True)
    entries = current_entries(layout, hasher)
    hasher.save()
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


def compare_with_manifest(layout: Layout, manifest: dict, hasher: Hasher) -> ManifestDiff:
    """Name every file that changed, went missing or appeared since the manifest was written."""
    diff = ManifestDiff()
    recorded = {entry["path"]: entry for entry in manifest["files"]}
    present = {layout.relative(path): path for path in iter_asset_files(layout)}
    for rel, entry in recorded.items():
        path = present.get(rel)
        if path is None:
            diff.missing.append(rel)
        elif path.stat().st_size != entry["size"] or hasher.sha256(path) != entry["sha256"]:
            diff.changed.append(rel)
    diff.unexpected = sorted(set(present) - set(recorded))
    diff.not_regular = non_regular_asset_entries(layout)
    hasher.save()
    return diff


def sha256sums_mismatches(layout: Layout, sums: Path, hasher: Hasher) -> tuple[int, list[str]]:
    """(entries, names of files that are missing, outside the root or different) of a
    `sha256sum -c` file; an unreadable one raises WmtpError."""
    entries = read_sha256sums(sums)
    bad = []
    for name, expected in entries.items():
        target = Path(os.path.normpath(sums.parent / name))
        inside = layout.contains(target)
        if not (inside and target.is_file() and hasher.sha256(target) == expected):
            bad.append(layout.relative(target) if inside else name)
    return len(entries), bad
