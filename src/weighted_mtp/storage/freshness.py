"""The freshness store: one answer to "is this asset still as it was built and verified?"

`.wmtp/freshness.json` holds two tables:

- `files`: every storage file hashed so far, `{path: [size, mtime_ns, inode, sha256]}`. A
  hash is reused only while its file keeps that fingerprint, inode included: a hash
  describes the bytes of one file on disk, and a rewrite through a temporary file and a
  rename changes the inode even when size and mtime come out equal. Model downloads record
  their files' hashes in SOURCE.json (hashed while copied); those count as known too.
- `assets`: one record per asset, keyed by its registry name (a small set by
  `<dataset>_small`), plus `verification` for the whole-storage checklist: what it was
  built from (`inputs`: fingerprint and hash of each input file, recorded when it is built)
  and what it produced (`files`: fingerprint and hash of each output, recorded when it
  passes verification, with `verified_at`).

`is_current(key)` compares fingerprints without reading a byte: size and mtime, so a storage
copied with its times (`cp -a`, `rsync -a`, a restored backup) stays current. The build, the
checklist's reports, `storage status` and training ask it. When only the fingerprints of an
asset's inputs moved, `inputs_unchanged` compares their hashes (hashing only the files that
moved), so an input rewritten with the same bytes reruns nothing. `MANIFEST.json` takes its
hashes from here (`pipeline.manifest`). A record never replaces verification: `wmtp verify`
re-reads every byte and records what it found.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json, read_json_or_none, write_json
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import CACHE_DIR, SPLITS, Layout
from weighted_mtp.storage.tree import iter_files

Fingerprint = list[int]  # [size, mtime_ns, inode]
FileRecord = list[Any]  # [size, mtime_ns, inode, sha256]

SMALL_SUFFIX = "_small"
VERIFICATION = "verification"  # the whole-storage checklist, made from MANIFEST.json
SHOW_PROGRESS_FROM = 64 << 20


def fingerprint(stat: os.stat_result) -> Fingerprint:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def unchanged(recorded: Any, stat: os.stat_result, *, same_inode: bool = True) -> bool:
    """Whether a recorded fingerprint still describes the file. Records without an inode
    (e.g. a download's SOURCE.json) and `same_inode=False` compare size and mtime."""
    if not isinstance(recorded, list) or len(recorded) < 2:
        return False
    compared = min(len(recorded), 3) if same_inode else 2
    return recorded[:compared] == fingerprint(stat)[:compared]


# ---------------------------------------------------------------- what each key covers


def small_key(dataset: str) -> str:
    return dataset + SMALL_SUFFIX


def asset_keys() -> tuple[str, ...]:
    """Every asset the store keeps a record for, in registry order (small sets last)."""
    small = tuple(small_key(s.name) for s in assets.ASSETS if "small" in s.build)
    return (*assets.MODELS, *assets.DATASETS, *small)


def _small_dataset(key: str) -> str | None:
    name = key.removesuffix(SMALL_SUFFIX)
    return name if key != name and name in assets.DATASETS else None


def asset_root(layout: Layout, key: str) -> Path:
    """The folder of an asset key (a model, a dataset or `<dataset>_small`)."""
    if key in assets.MODELS:
        return layout.model(key).root
    if key in assets.DATASETS:
        return layout.dataset(key).root
    dataset = _small_dataset(key)
    if dataset is None:
        raise WmtpError(f"the freshness store has no asset {key!r}")
    return layout.small(dataset).root


def inputs_of(layout: Layout, key: str) -> list[Path]:
    """The files `key` is built from: a prepared dataset's raw JSONL, a small set's processed
    splits, the checklist's manifest. Models check their raw files themselves (verify)."""
    if key == VERIFICATION:
        return [layout.manifest]
    if key in assets.DATASETS:
        return sorted(layout.dataset(key).raw.glob("*.jsonl"))
    dataset = _small_dataset(key)
    if dataset is not None:
        return [layout.dataset(dataset).split(split) for split in SPLITS]
    return []


def outputs_of(layout: Layout, key: str) -> list[Path]:
    """The files `key` consists of: everything under its folder except its inputs and
    download caches (upstream Parquet is not the asset, and may be tens of GB)."""
    if key == VERIFICATION:
        return [layout.last_verification]
    root = asset_root(layout, key)
    inputs = set(inputs_of(layout, key))
    return [
        path
        for path in iter_files(root)
        if path not in inputs and CACHE_DIR not in path.relative_to(root).parts[:-1]
    ]


# ---------------------------------------------------------------- the store


@dataclass
class AssetRecord:
    """What an asset was built from and what it produced, as of `verified_at`."""

    inputs: dict[str, FileRecord] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    verified_at: str | None = None  # None: built, not verified yet

    def to_dict(self) -> dict[str, Any]:
        return {"verified_at": self.verified_at, "inputs": self.inputs, "files": self.files}

    @classmethod
    def from_dict(cls, data: Any) -> AssetRecord | None:
        if not isinstance(data, dict):
            return None
        inputs, files = data.get("inputs", {}), data.get("files", {})
        if not isinstance(inputs, dict) or not isinstance(files, dict):
            return None
        verified_at = data.get("verified_at")
        return cls(inputs, files, verified_at if isinstance(verified_at, str) else None)


def _legacy_records(layout: Layout) -> dict[str, Any]:
    """The verification stamps of a storage from before the store (one file per asset
    folder, without hashes), as records: what they fingerprinted among the asset's inputs
    counts as its inputs, so an upgraded storage is not verified all over again."""
    records = {}
    for key in asset_keys():
        name = layout.relative(asset_root(layout, key)).replace("/", "__")
        stamp = read_json_or_none(layout.legacy_stamps_dir / f"{name}.json", "verification stamp")
        if not isinstance(stamp, dict) or not isinstance(stamp.get("files"), dict):
            continue
        fingerprints = {**stamp["files"], **(stamp.get("inputs") or {})}
        inputs = {layout.relative(p) for p in inputs_of(layout, key)}
        records[key] = {
            "verified_at": stamp.get("verified_at"),
            "inputs": {rel: fp for rel, fp in fingerprints.items() if rel in inputs},
            "files": {
                rel: fp
                for rel, fp in stamp["files"].items()
                if rel not in inputs and CACHE_DIR not in rel.split("/")  # caches: not assets
            },
        }
    return records


def _load(layout: Layout) -> tuple[dict[str, FileRecord], dict[str, AssetRecord]]:
    """The store on disk; a lost or damaged one means re-hashing and re-verifying. A storage
    from before the store keeps its hash cache and verification stamps."""
    data = read_json_or_none(layout.freshness_store, "freshness store")
    if not isinstance(data, dict):
        legacy = read_json_or_none(layout.legacy_hash_cache, "hash cache")
        data = {"files": legacy, "assets": _legacy_records(layout)}
    files = data.get("files")
    records = data.get("assets")
    assets_ = {}
    for key, raw in (records if isinstance(records, dict) else {}).items():
        record = AssetRecord.from_dict(raw)
        if record is not None:
            assets_[key] = record
    return (files if isinstance(files, dict) else {}), assets_


def _from_downloads(layout: Layout) -> dict[str, FileRecord]:
    """Model downloads record each file's hash with its size and mtime (SOURCE.json): the
    15 GB checkpoint is hashed while it is copied, not once more afterwards."""
    known = {}
    for name in assets.BASE_MODELS:
        paths = layout.model(name)
        try:
            files = read_json(paths.source, "SOURCE.json").get("files", {})
        except (WmtpError, AttributeError):
            continue
        for rel, entry in files.items() if isinstance(files, dict) else ():
            if isinstance(entry, dict) and {"size", "mtime_ns", "sha256"} <= entry.keys():
                known[layout.relative(paths.file(rel))] = [
                    entry["size"],
                    entry["mtime_ns"],
                    entry["sha256"],
                ]
    return known


class Store:
    """The freshness store of one storage root, loaded once, saved by `save()`.

    With `trust_known=False` (verification), every file is read again once per store;
    otherwise a known hash is reused while its file keeps its fingerprint. `save()` merges
    what this store changed into the file on disk, so stores opened by nested steps (a
    model's verification inside the checklist) do not undo each other's records."""

    def __init__(self, layout: Layout, *, trust_known: bool = True) -> None:
        self.layout = layout
        self.trust_known = trust_known
        self._files, self._assets = _load(layout)
        self._downloads = _from_downloads(layout)
        self._read_now: set[str] = set()  # hashed by this store
        self._changed_files: set[str] = set()
        self._changed_assets: set[str] = set()

    # -------------------------------------------------------------- hashes

    def _known(self, rel: str, stat: os.stat_result) -> str | None:
        for entry in (self._files.get(rel), self._downloads.get(rel)):
            if isinstance(entry, list) and len(entry) >= 3 and unchanged(entry[:-1], stat):
                return str(entry[-1])
        return None

    def sha256(self, path: Path) -> str:
        """The file's SHA-256, read only if the store cannot vouch for it."""
        rel = self.layout.relative(path)
        stat = path.stat()
        known = self._known(rel, stat)
        if known is not None and (self.trust_known or rel in self._read_now):
            return known
        digest = sha256_file(path, show_progress=stat.st_size >= SHOW_PROGRESS_FROM)
        self._files[rel] = [*fingerprint(stat), digest]
        self._read_now.add(rel)
        self._changed_files.add(rel)
        return digest

    def _records(self, paths: Iterable[Path]) -> dict[str, FileRecord]:
        return {
            self.layout.relative(p): [*fingerprint(p.stat()), self.sha256(p)]
            for p in paths
            if p.is_file()
        }

    # -------------------------------------------------------------- asset records

    def record(self, key: str) -> AssetRecord | None:
        return self._assets.get(key)

    def record_built(self, key: str) -> None:
        """`key` was just built from its inputs as they are now; not verified yet."""
        self._assets[key] = AssetRecord(inputs=self._records(inputs_of(self.layout, key)))
        self._changed_assets.add(key)

    def record_verified(self, key: str, *, built_now: bool = False) -> None:
        """`key` passed verification: its outputs as they are now, with their hashes. The
        inputs stay those recorded when it was built (`built_now`: the current ones)."""
        if built_now or key not in self._assets:
            self.record_built(key)
        record = self._assets[key]
        record.files = self._records(outputs_of(self.layout, key))
        record.verified_at = utc_now()
        self._changed_assets.add(key)

    def clear(self, key: str) -> None:
        """Forget `key`'s record: the next build makes or verifies it again."""
        if self._assets.pop(key, None) is not None:
            self._changed_assets.add(key)

    def _still(self, recorded: dict[str, FileRecord], paths: Iterable[Path]) -> bool:
        current = {self.layout.relative(p): p for p in paths if p.is_file()}
        return recorded.keys() == current.keys() and all(
            unchanged(recorded[rel], path.stat(), same_inode=False) for rel, path in current.items()
        )

    def is_current(self, key: str) -> bool:
        """`key` passed verification and neither it nor its inputs changed since (size and
        mtime of every file; nothing is read)."""
        record = self._assets.get(key)
        return (
            record is not None
            and record.verified_at is not None
            and self._still(record.files, outputs_of(self.layout, key))
            and self._still(record.inputs, inputs_of(self.layout, key))
        )

    def inputs_unchanged(self, key: str) -> bool:
        """`key`'s inputs hold the bytes it was built from: same fingerprints, or for those
        whose fingerprint moved (a copy, a rewrite), the same hash. The record then takes
        the new fingerprints, so the next check is cheap again."""
        record = self._assets.get(key)
        if record is None:
            return False
        current = {self.layout.relative(p): p for p in inputs_of(self.layout, key) if p.is_file()}
        if record.inputs.keys() != current.keys():
            return False
        for rel, path in current.items():
            entry = record.inputs[rel]
            if unchanged(entry, path.stat(), same_inode=False):
                continue
            if not isinstance(entry, list) or len(entry) < 4 or self.sha256(path) != entry[-1]:
                return False
            record.inputs[rel] = [*fingerprint(path.stat()), entry[-1]]
            self._changed_assets.add(key)
        return True

    def current_or_same_inputs(self, key: str) -> bool:
        """`is_current`, or current once the inputs whose fingerprint moved prove to hold
        the bytes it was built from (e.g. a dataset prepared again to the same splits)."""
        return self.is_current(key) or (self.inputs_unchanged(key) and self.is_current(key))

    # -------------------------------------------------------------- persistence

    def save(self) -> None:
        """Merge this store's hashes and records into the file on disk (under the storage
        lock: one writer at a time); hashes of files that are gone are dropped. Nothing
        changed: nothing is written."""
        if not (self._changed_files or self._changed_assets):
            return
        files, records = _load(self.layout)
        files.update({rel: self._files[rel] for rel in self._changed_files})
        for key in self._changed_assets:
            if key in self._assets:
                records[key] = self._assets[key]
            else:
                records.pop(key, None)
        kept = {rel: e for rel, e in files.items() if (self.layout.root / rel).is_file()}
        write_json(
            self.layout.freshness_store,
            {"files": kept, "assets": {k: r.to_dict() for k, r in sorted(records.items())}},
        )
        self.layout.legacy_hash_cache.unlink(missing_ok=True)  # taken over by the store
        shutil.rmtree(self.layout.legacy_stamps_dir, ignore_errors=True)
        self._changed_files.clear()
        self._changed_assets.clear()


# ---------------------------------------------------------------- one-call helpers


def is_current(layout: Layout, key: str) -> bool:
    return Store(layout).is_current(key)


def record_verified(layout: Layout, key: str, *, built_now: bool = False) -> None:
    store = Store(layout)
    store.record_verified(key, built_now=built_now)
    store.save()


def clear(layout: Layout, key: str) -> None:
    store = Store(layout)
    store.clear(key)
    store.save()
