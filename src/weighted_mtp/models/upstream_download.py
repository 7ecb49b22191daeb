"""Fetching upstream model files into `raw/` and `tokenizer/`, from the hub or a mirror.

Hub downloads go through `huggingface_hub` (repo info, file metadata, HTTP transfer).
huggingface_hub 2.x deletes a partial file when its process ends, so a 10 GB shard cut off
by a kill would start over; wmtp therefore keeps each transfer in a partial file of its own
under the asset's `.cache/downloads/` (kept by `storage clean`) and resumes it with an HTTP
Range request. A finished file is hashed, compared with the hub's LFS hash and the catalog's
SHA-256, and only then renamed to its final name. The token comes from HF_TOKEN or the
user's login, as huggingface_hub resolves it; wmtp never reads, logs or records it. The
revision is resolved to a commit once, so every file comes from the same commit. A mirror is
a local folder laid out like the upstream repo (offline machines, tests). Each file's
SHA-256 is recorded in `raw/SOURCE.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from weighted_mtp import __version__, progress
from weighted_mtp.catalog import Catalog, CatalogEntry
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import (
    atomic_write,
    ensure_free_space,
    move_into_place,
    read_json,
    write_json,
)
from weighted_mtp.storage.hashing import CHUNK_SIZE, HashingWriter, sha256_file
from weighted_mtp.storage.layout import Layout, ModelPaths
from weighted_mtp.storage.tree import iter_files

AUTH_HINT = "set HF_TOKEN or run `hf auth login`"


@dataclass(frozen=True)
class PlannedFile:
    repo_path: str
    destination: PurePosixPath  # relative to the asset folder
    size: int | None = None
    lfs_sha256: str | None = None  # what the hub reports
    expected_sha256: str | None = None  # what the catalog pins


def plan_files(
    asset: CatalogEntry, available: dict[str, tuple[int | None, str | None]], where: str
) -> list[PlannedFile]:
    """The catalog's files among `available` (`{repo path: (size, lfs sha256)}`); every
    catalog entry must match at least one file, and a hash the source reports must be the
    one the catalog pins."""
    for spec in asset.files:
        if not any(spec.matches(path) for path in available):
            raise WmtpError(
                f"{where} has no file matching {spec.path!r}",
                hint="check the catalog entry and the revision",
            )
    planned = []
    for path in sorted(available):
        destination = asset.destination(path)
        if destination is None:
            continue
        item = PlannedFile(path, destination, *available[path], asset.expected_sha256(path))
        if item.lfs_sha256 and item.expected_sha256 and item.lfs_sha256 != item.expected_sha256:
            raise WmtpError(
                f"{where} serves {path} with SHA-256 {item.lfs_sha256[:12]}…, the catalog "
                f"expects {item.expected_sha256[:12]}…",
                hint="check the catalog's revision and sha256 for this file",
            )
        planned.append(item)
    return planned


# --- plan (--dry-run) -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanEntry:
    path: str  # repo path, or the catalog's glob when only the hub can expand it
    dest: str  # relative to the storage root
    sha256: str | None


@dataclass(frozen=True)
class DownloadPlan:
    repo: str
    repo_type: str
    revision: str
    files: list[PlanEntry]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_download(
    layout: Layout, asset: CatalogEntry, asset_root: Path, revision: str | None = None
) -> DownloadPlan:
    """What a hub download of `asset` would fetch and where it would land, from the catalog
    alone: no network, nothing written."""
    repo = asset.repo
    entries = [
        PlanEntry(
            spec.path,
            layout.relative(asset_root / spec.destination(spec.path).as_posix()),
            spec.sha256,
        )
        for spec in asset.files
    ]
    return DownloadPlan(repo, asset.repo_type, revision or asset.revision, entries)


def download_model(
    layout: Layout,
    catalog: Catalog,
    name: str,
    *,
    mirror: str | Path | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Fetch a base model's upstream files; returns the SOURCE.json content."""
    asset = catalog.model(name)
    paths = layout.model(name)
    requested = revision or asset.revision
    if mirror is not None:
        planned, hashes = _fetch_from_mirror(asset, paths, Path(mirror))
        commit = None
    else:
        planned, commit, hashes = fetch_from_hub(
            asset, requested, paths.root, paths.cache, lambda path: recorded_hash(paths, path)
        )
    files = _record_files(paths, planned, hashes)
    source = {
        "name": name,
        "repo": asset.repo,
        "repo_type": asset.repo_type,
        "revision": requested,
        "commit": commit,
        "mirror": str(Path(mirror).absolute()) if mirror is not None else None,
        "downloaded_at": utc_now(),
        "tool_version": __version__,
        "files": files,
    }
    write_json(paths.source, source)
    return source


def _record_files(
    paths: ModelPaths, planned: list[PlannedFile], hashes: dict[Path, str]
) -> dict[str, Any]:
    """SOURCE.json's file entries; `hashes` holds digests already taken while copying, and a
    file unchanged since the last download keeps its recorded digest (no second 15 GB read)."""
    files = {}
    for item in planned:
        target = paths.file(item.destination)
        digest = (
            hashes.get(target)
            or recorded_hash(paths, target)
            or sha256_file(target, show_progress=True)
        )
        if item.lfs_sha256 and digest != item.lfs_sha256:
            raise WmtpError(
                f"downloaded {item.repo_path} has SHA-256 {digest[:12]}…, the hub says "
                f"{item.lfs_sha256[:12]}…",
                path=target,
                hint="delete the file and download again",
            )
        stat = target.stat()
        files[item.destination.as_posix()] = {
            "repo_path": item.repo_path,
            "size": stat.st_size,
            "sha256": digest,
            "mtime_ns": stat.st_mtime_ns,
        }
    return files


def recorded_hash(paths: ModelPaths, path: Path) -> str | None:
    """The SHA-256 SOURCE.json recorded for `path`, if the file is unchanged since (same
    size and modification time); saves re-hashing a 15 GB checkpoint on every convert."""
    if not paths.source.is_file():
        return None
    entry = (
        read_json(paths.source, "SOURCE.json")
        .get("files", {})
        .get(path.relative_to(paths.root).as_posix())
    )
    if not isinstance(entry, dict) or not path.is_file():
        return None
    stat = path.stat()
    if (entry.get("size"), entry.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return None
    return entry.get("sha256")


# --- mirror ---------------------------------------------------------------------------------


def _fetch_from_mirror(
    asset: CatalogEntry, paths: ModelPaths, mirror: Path
) -> tuple[list[PlannedFile], dict[Path, str]]:
    if not mirror.is_dir():
        raise WmtpError("mirror folder not found", path=mirror)
    available: dict[str, tuple[int | None, str | None]] = {
        path.relative_to(mirror).as_posix(): (path.stat().st_size, None)
        for path in iter_files(mirror)
    }
    planned = plan_files(asset, available, f"mirror {mirror}")
    ensure_free_space(paths.root, sum(p.size or 0 for p in planned), f"{asset.name} files")
    hashes: dict[Path, str] = {}
    for item in planned:
        target = paths.file(item.destination)
        hashes[target] = _copy(mirror / item.repo_path, target)
    return planned, hashes


def _copy(source: Path, target: Path) -> str:
    """Copy atomically with a progress bar; returns the SHA-256 of what was written."""
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    with (
        progress.task(f"copy {source.name}", source.stat().st_size, "bytes") as advance,
        source.open("rb", buffering=0) as src,
        atomic_write(target, "wb") as handle,
    ):
        out = HashingWriter(handle)
        while n := src.readinto(buffer):
            out.write(view[:n])
            advance(n)
    return out.hexdigest()


# --- hub ------------------------------------------------------------------------------------


@contextmanager
def hub_errors(repo: str, revision: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one line that says what to do."""
    from huggingface_hub import errors

    url = f"https://huggingface.co/{repo}"
    try:
        yield
    except errors.GatedRepoError:
        raise WmtpError(
            f"{repo} is gated and this account has no access",
            hint=f"accept the license at {url}, then {AUTH_HINT}",
        ) from None
    except errors.RepositoryNotFoundError:
        raise WmtpError(
            f"{repo} was not found or needs authorisation",
            hint=f"check the name at {url}; if it is gated or private, {AUTH_HINT}",
        ) from None
    except errors.RevisionNotFoundError:
        raise WmtpError(
            f"revision {revision!r} does not exist in {repo}",
            hint="use a branch, tag or commit of the repo (--revision)",
        ) from None
    except errors.RemoteEntryNotFoundError:
        raise WmtpError(
            f"a catalog file is missing from {repo} at revision {revision!r}",
            hint="check the catalog's file list",
        ) from None
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError):
        raise WmtpError(
            f"cannot reach the hub for {repo} (offline)",
            hint="connect and rerun (downloads resume), unset HF_HUB_OFFLINE, or "
            "use --mirror DIR with a local copy",
        ) from None
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise WmtpError(
                f"the hub refused access to {repo} (HTTP {status})",
                hint=f"accept the license at {url}, then {AUTH_HINT}",
            ) from None
        raise WmtpError(
            f"the hub request for {repo} failed (HTTP {status})",
            hint="rerun later; finished and partial downloads are kept",
        ) from None
    except errors.HTTPError as exc:
        raise WmtpError(
            f"network error while downloading {repo} ({type(exc).__name__})",
            hint="rerun when the connection is back; the download resumes",
        ) from None


def fetch_from_hub(
    asset: CatalogEntry,
    revision: str,
    root: Path,
    cache: Path,
    known_hash: Callable[[Path], str | None] = lambda _path: None,
    also_needed: Callable[[list[PlannedFile]], int] = lambda _files: 0,
) -> tuple[list[PlannedFile], str, dict[Path, str]]:
    """Resolve `revision` once, then bring every catalog file of that commit under `root`
    (the asset folder); `known_hash` may spare re-reading a file recorded earlier, and
    `also_needed` adds the disk the files' later outputs take to the free-space check.
    Returns the plan, the commit and each destination's SHA-256."""
    repo = asset.repo
    with hub_errors(repo, revision):
        commit, available = hub_listing(repo, asset.repo_type, revision)
        planned = plan_files(asset, available, f"{asset.repo}@{commit}")
        hashes = {}
        for item in planned:
            target = root / item.destination.as_posix()
            if digest := _kept(target, item, known_hash):
                hashes[target] = digest
        missing = [p for p in planned if root / p.destination.as_posix() not in hashes]
        needed = sum(p.size or 0 for p in missing) + also_needed(planned)
        ensure_free_space(root, needed, f"{asset.name} files")
        for item in missing:
            target = root / item.destination.as_posix()
            hashes[target] = fetch_hub_file(asset, commit, item, target, cache)
    return planned, commit, hashes


def hub_listing(
    repo: str, repo_type: str, revision: str
) -> tuple[str, dict[str, tuple[int | None, str | None]]]:
    """The commit `revision` resolves to and `{repo path: (size, LFS SHA-256)}` at it."""
    from huggingface_hub import HfApi

    info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, files_metadata=True)
    if info.sha is None:
        raise WmtpError(
            f"the hub did not say which commit {revision!r} of {repo} is",
            hint="check HF_ENDPOINT; rerun later",
        )
    siblings = getattr(info, "siblings", None) or []
    return info.sha, {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in siblings}


def _kept(target: Path, item: PlannedFile, known_hash: Callable[[Path], str | None]) -> str | None:
    """The digest of a file already at its destination when it is the one the hub serves
    (same size and SHA-256), so a rerun after a kill fetches only what is missing. Without
    an LFS hash (small text files) the file is fetched again."""
    wanted = item.expected_sha256 or item.lfs_sha256
    if not wanted or not target.is_file() or target.stat().st_size != item.size:
        return None
    digest = known_hash(target) or sha256_file(target, show_progress=True)
    return digest if digest == wanted else None


def partial_path(cache: Path, item: PlannedFile, etag: str) -> Path:
    """Where a transfer is kept until it is complete: one name per file and version, so a
    rerun resumes it and a new upstream version never appends to an old one."""
    name = f"{item.destination.name}.{etag[:16]}.part"
    return cache / "downloads" / item.destination.parent / name


def fetch_hub_file(
    asset: CatalogEntry, commit: str, item: PlannedFile, target: Path, cache: Path
) -> str:
    """Download one repo file at `commit` to `target`, resuming its partial file with an
    HTTP Range request; returns its SHA-256. Bytes that differ from the hub's LFS hash or
    the catalog's SHA-256 are deleted and refused; nothing unverified gets the final name."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    repo = asset.repo
    url = hf_hub_url(repo, item.repo_path, repo_type=asset.repo_type, revision=commit)
    metadata = get_hf_file_metadata(url)
    size = metadata.size if metadata.size is not None else item.size
    partial = partial_path(cache, item, metadata.etag or commit)
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = partial.stat().st_size if partial.is_file() else 0
    if size is not None and done > size:  # not a prefix of this file: start over
        partial.unlink()
        done = 0
    try:
        with partial.open("ab") as handle:
            http_get(
                metadata.location,
                handle,
                resume_size=done,
                headers=build_hf_headers(),
                expected_size=size,
                displayed_filename=item.repo_path,
            )
    except OSError as exc:
        if exc.errno is not None:  # the local disk, not the transfer
            raise
        expected = f"{size:,}" if size is not None else "?"
        raise WmtpError(
            f"the transfer of {item.repo_path} ended early ({partial.stat().st_size:,} of "
            f"{expected} bytes)",
            path=partial,
            hint="rerun; the download resumes where it stopped",
        ) from None
    digest = sha256_file(partial, show_progress=True)
    wanted = item.expected_sha256 or item.lfs_sha256
    if wanted and digest != wanted:
        partial.unlink()
        source = "catalog" if item.expected_sha256 else "hub"
        raise WmtpError(
            f"downloaded {item.repo_path} has SHA-256 {digest[:12]}…, the {source} says "
            f"{wanted[:12]}…; the download was deleted",
            path=target,
            hint="rerun to download it again; if it persists, check the catalog's revision",
        )
    move_into_place(partial, target)
    return digest
