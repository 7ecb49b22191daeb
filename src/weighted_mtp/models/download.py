"""Fetching upstream model files into `raw/` and `tokenizer/`, from the hub or a mirror.

Hub downloads use `huggingface_hub` with `local_dir`, which resumes interrupted transfers
from its partial files under `<folder>/.cache/` (kept by `storage clean`). The token comes
from HF_TOKEN or the user's login, as huggingface_hub resolves it; wmtp never reads, logs
or records it. The revision is resolved to a commit once, so every file comes from the same
commit. A mirror is a local folder laid out like the upstream repo (offline machines, tests).
Each file's SHA-256 is recorded in `raw/SOURCE.json`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from weighted_mtp import __version__, progress
from weighted_mtp.catalog import Asset, Catalog
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import atomic_write, ensure_free_space, read_json, write_json
from weighted_mtp.storage.hashing import CHUNK_SIZE, HashingWriter, sha256_file
from weighted_mtp.storage.layout import Layout, ModelPaths
from weighted_mtp.storage.tree import iter_files

AUTH_HINT = "set HF_TOKEN or run `hf auth login`"


@dataclass(frozen=True)
class PlannedFile:
    repo_path: str
    destination: PurePosixPath  # relative to the model folder
    size: int | None = None
    lfs_sha256: str | None = None

    @property
    def local_dir(self) -> PurePosixPath:
        """The folder that `hf_hub_download(local_dir=...)` needs for this destination."""
        depth = len(PurePosixPath(self.repo_path).parts)
        return PurePosixPath(*self.destination.parts[:-depth])


def plan_files(
    asset: Asset, available: dict[str, tuple[int | None, str | None]], where: str
) -> list[PlannedFile]:
    """The catalog's files among `available` (`{repo path: (size, lfs sha256)}`); every
    catalog entry must match at least one file."""
    for spec in asset.files:
        if not any(spec.matches(path) for path in available):
            raise WmtpError(
                f"{where} has no file matching {spec.path!r}",
                hint="check the catalog entry and the revision",
            )
    planned = []
    for path in sorted(available):
        destination = asset.destination(path)
        if destination is not None:
            planned.append(PlannedFile(path, destination, *available[path]))
    return planned


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
    if not asset.downloadable:
        raise WmtpError(
            f"{name} is built from {asset.derived_from}, not downloaded",
            hint=f"run `wmtp models micro {name}`",
        )
    requested = revision or asset.revision
    if mirror is not None:
        planned, hashes = _fetch_from_mirror(asset, paths, Path(mirror))
        commit = None
    else:
        planned, commit = _fetch_from_hub(asset, paths, requested)
        hashes = {}
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
    asset: Asset, paths: ModelPaths, mirror: Path
) -> tuple[list[PlannedFile], dict[Path, str]]:
    if not mirror.is_dir():
        raise WmtpError("mirror folder not found", path=mirror)
    available = {
        path.relative_to(mirror).as_posix(): (path.stat().st_size, None)
        for path in iter_files(mirror)
    }
    planned = plan_files(asset, available, f"mirror {mirror}")
    ensure_free_space(paths.root, sum(p.size or 0 for p in planned), f"{asset.name} files")
    hashes = {}
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


def _fetch_from_hub(
    asset: Asset, paths: ModelPaths, revision: str
) -> tuple[list[PlannedFile], str]:
    from huggingface_hub import HfApi, hf_hub_download

    with hub_errors(asset.repo, revision):
        info = HfApi().repo_info(
            asset.repo, revision=revision, repo_type=asset.repo_type, files_metadata=True
        )
        available = {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings}
        planned = plan_files(asset, available, f"{asset.repo}@{revision}")
        missing = [p for p in planned if not _complete(paths, p)]
        ensure_free_space(paths.root, sum(p.size or 0 for p in missing), f"{asset.name} files")
        for item in planned:
            hf_hub_download(
                asset.repo,
                item.repo_path,
                repo_type=asset.repo_type,
                revision=info.sha,
                local_dir=paths.root / item.local_dir,
            )
    return planned, info.sha


def _complete(paths: ModelPaths, item: PlannedFile) -> bool:
    target = paths.file(item.destination)
    return target.is_file() and item.size is not None and target.stat().st_size == item.size
