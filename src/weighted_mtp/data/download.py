"""`wmtp data download`: upstream files (hub or a local mirror) to raw JSONL.

Upstream Parquet lands in the dataset's `.cache` folder (kept across `clean`, so a rerun
does not download again); it is then streamed batch by batch into `raw/<part>.jsonl`,
hashed while written. A raw *part* is an upstream split where the dataset has official
ones (CodeContests), else the whole dataset in one file named like the original
(`mbpp.jsonl`, `HumanEval.jsonl`): their splits are decided by `prepare`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from weighted_mtp import __version__, assets, progress
from weighted_mtp.catalog import Catalog, CatalogEntry
from weighted_mtp.clock import utc_now
from weighted_mtp.data.sources import iter_parquet_rows
from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import current_limits, raise_hint
from weighted_mtp.storage.atomic import atomic_write, ensure_free_space, write_json
from weighted_mtp.storage.hashing import HashingWriter, sha256_file, write_sha256sums
from weighted_mtp.storage.jsonl import iter_jsonl
from weighted_mtp.storage.layout import DatasetPaths, Layout
from weighted_mtp.storage.regular import require_regular

# Upstream split names (file-name prefixes) and the raw part each becomes.
_CODECONTESTS_PARTS = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
_SUFFIXES = (".parquet", ".jsonl.gz", ".jsonl")

# Bytes of raw JSONL per upstream byte, measured on the synthetic fixtures of each dataset
# and rounded up to the next 0.5 (docs/datasets.md, "Disk space"): JSONL/Parquet 2.10 CodeContests,
# 2.70 MBPP, 2.69 HumanEval; JSONL/gzip 4.38 (HumanEval). A dataset's own factors
# (`Benchmark.jsonl_per_parquet`, `prepared_per_jsonl`: processed/raw 1.24, 2.69, 1.09)
# are in the registry.
JSONL_PER_UPSTREAM = {".parquet": 3.0, ".jsonl.gz": 4.5, ".jsonl": 1.0}


def output_space(name: str, upstream: list[tuple[str, int]]) -> int:
    """Disk that the raw JSONL and `prepare`'s outputs will take, estimated from the
    upstream files' names and sizes (the JSONL is larger than the Parquet it comes from)."""
    spec = assets.benchmark(name)
    jsonl = 0.0
    for upstream_name, size in upstream:
        suffix = next((s for s in _SUFFIXES if upstream_name.endswith(s)), ".jsonl")
        factor = JSONL_PER_UPSTREAM[suffix]
        if suffix == ".parquet" and spec.jsonl_per_parquet is not None:
            factor = spec.jsonl_per_parquet
        jsonl += size * factor
    return int(jsonl * (1 + spec.prepared_per_jsonl))


def raw_part(dataset: str, upstream_name: str) -> str:
    """The raw file (without `.jsonl`) an upstream file's rows go into."""
    single = assets.benchmark(dataset).raw_file
    if single is not None:
        return single
    stem = PurePosixPath(upstream_name).name
    for suffix in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    split = stem.split("-", 1)[0]
    return _CODECONTESTS_PARTS.get(split, split)


def _iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(where, row)`: "row N" of a Parquet file, "line N" of a JSONL one."""
    if path.name.endswith(".parquet"):
        for number, row in enumerate(iter_parquet_rows(path), start=1):
            yield f"row {number}", row
    else:
        for line, row in iter_jsonl(path):
            yield f"line {line}", row


def raw_line(row: dict[str, Any], source: Path, where: str, max_bytes: int) -> bytes:
    """A row as one line of standard JSON; NaN/Infinity (which Python's json would write)
    and lines beyond the line limit are refused here, not found later by `prepare`."""
    try:
        line = json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
    except ValueError:
        raise WmtpError(
            f"{where} holds a NaN or Infinity, which JSON cannot represent",
            path=source,
            hint="fix the upstream file or use another revision",
        ) from None
    if len(line) > max_bytes:
        raise WmtpError(
            f"{where} is longer than {max_bytes:,} bytes as JSON",
            path=source,
            hint=raise_hint("max_line_bytes", max_bytes),
        )
    return line


def _mirror_files(asset: CatalogEntry, mirror: Path) -> list[tuple[str, Path]]:
    """`(upstream name, path)` of the mirror's files: the upstream Parquet layout, else JSONL."""
    if not mirror.is_dir():
        raise WmtpError("mirror folder not found", path=mirror)
    found = {}
    for spec in asset.files:
        for path in mirror.glob(spec.path):
            if not path.is_dir():
                found[path.relative_to(mirror).as_posix()] = path
    if not found:
        for pattern in ("*.jsonl", "*.jsonl.gz"):
            for path in mirror.glob(pattern):
                found[path.name] = path
    for path in found.values():
        require_regular(path, "mirror file")
    if not found:
        patterns = ", ".join(spec.path for spec in asset.files)
        raise WmtpError(
            f"mirror holds no files for dataset {asset.name!r}",
            path=mirror,
            hint=f"expected the upstream layout ({patterns}) or JSONL files",
        )
    return sorted(found.items())


def _hub_files(
    asset: CatalogEntry, paths: DatasetPaths, revision: str
) -> tuple[str, list[tuple[str, Path]], dict[Path, str]]:
    """Download the catalog's files into the dataset folder; returns the resolved commit,
    `(upstream name, path)` of each file and the SHA-256s taken while downloading."""
    from weighted_mtp.models.upstream_download import fetch_from_hub

    planned, commit, hashes = fetch_from_hub(
        asset,
        revision,
        paths.root,
        paths.cache,
        also_needed=lambda files: output_space(
            asset.name, [(f.repo_path, f.size or 0) for f in files]
        ),
    )
    files = [(item.repo_path, paths.root / item.destination.as_posix()) for item in planned]
    return commit, files, hashes


def _write_part(target: Path, sources: list[Path], advance: progress.Advance) -> dict[str, Any]:
    rows, max_bytes = 0, current_limits().max_line_bytes
    with atomic_write(target, "wb") as handle:
        writer = HashingWriter(handle)
        for source in sources:
            for where, row in _iter_rows(source):
                writer.write(raw_line(row, source, where, max_bytes))
                rows += 1
            advance(1)
    return {"rows": rows, "size": writer.bytes_written, "sha256": writer.hexdigest()}


def write_raw(paths: DatasetPaths, name: str, files: list[tuple[str, Path]]) -> dict[str, Any]:
    """Stream upstream files into `raw/<part>.jsonl`; returns the SOURCE.json `raw` entry."""
    parts: dict[str, list[Path]] = {}
    for upstream, path in files:
        parts.setdefault(raw_part(name, upstream), []).append(path)
    raw: dict[str, Any] = {}
    with progress.task(f"{name}: to raw JSONL", len(files)) as advance:
        for part, sources in sorted(parts.items()):
            target = paths.raw_split(part)
            raw[target.name] = _write_part(target, sources, advance)
    for stale in paths.raw.glob("*.jsonl"):
        if stale.name not in raw:
            stale.unlink()
    return raw


def download_dataset(
    layout: Layout,
    catalog: Catalog,
    name: str,
    *,
    mirror: str | Path | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Fetch a dataset (hub or mirror) into `raw/`; returns the SOURCE.json content."""
    paths = layout.dataset(name)
    asset = catalog.dataset(name)
    hashes: dict[Path, str] = {}
    if mirror is not None:
        mirror = Path(mirror).expanduser().absolute()
        files, resolved = _mirror_files(asset, mirror), None
        sizes = [(upstream, path.stat().st_size) for upstream, path in files]
        ensure_free_space(paths.root, output_space(name, sizes), f"{name} raw and prepared")
    else:
        resolved, files, hashes = _hub_files(asset, paths, revision or asset.revision)
    raw = write_raw(paths, name, files)
    source = {
        "dataset": name,
        "repo": asset.repo,
        "revision": resolved or revision or asset.revision,
        "mirror": str(mirror) if mirror is not None else None,
        "upstream_files": {u: hashes.get(path) or sha256_file(path) for u, path in files},
        "raw_files": raw,
        "downloaded_at": utc_now(),
        "tool_version": __version__,
    }
    write_json(paths.source, source)
    write_sha256sums(
        paths.raw_checksums,
        {os.path.relpath(paths.raw / f, paths.stats): e["sha256"] for f, e in raw.items()},
    )
    return source
