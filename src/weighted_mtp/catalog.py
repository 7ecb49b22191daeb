"""The asset catalog: where each downloaded model and dataset's upstream files are.

The packaged `catalog.yaml` is the default; a user file (`--catalog` / `WMTP_CATALOG`) with
the same schema replaces it, e.g. to pin revisions or point at a fork. What an asset is
(format, derivation, gating) is declared in `weighted_mtp.assets`, not here.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from weighted_mtp import assets
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import safe_relative

CATALOG_ENV = "WMTP_CATALOG"

_FILE = {
    "type": "object",
    "required": ["path", "into"],
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "into": {"type": "string"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "additionalProperties": False,
}
_UPSTREAM = {
    "type": "object",
    "required": ["repo"],
    "properties": {
        "repo": {"type": "string", "pattern": "^[^/\\s]+/[^/\\s]+$"},
        "repo_type": {"enum": ["model", "dataset"]},
        "revision": {"type": "string", "minLength": 1},
        "files": {"type": "array", "items": _FILE, "minItems": 1},
    },
    "additionalProperties": False,
}
DOWNLOADED = [s for s in assets.ASSETS if "download" in s.build]
MODELS = tuple(s.name for s in DOWNLOADED if s.is_model)
DATASETS = tuple(s.name for s in DOWNLOADED if s.is_dataset)
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["models", "datasets"],
    "properties": {
        "models": {
            "type": "object",
            "propertyNames": {"enum": list(MODELS)},
            "additionalProperties": _UPSTREAM,
        },
        "datasets": {
            "type": "object",
            "propertyNames": {"enum": list(DATASETS)},
            "additionalProperties": _UPSTREAM,
        },
    },
}


@dataclass(frozen=True)
class FileSpec:
    path: str
    into: str
    sha256: str | None = None  # the upstream file's SHA-256 at the pinned revision, if known

    def matches(self, repo_path: str) -> bool:
        return fnmatch.fnmatchcase(repo_path, self.path)

    def destination(self, repo_path: str) -> PurePosixPath:
        """Where a repo file lands, relative to the asset folder."""
        into = PurePosixPath(self.into.strip("/") or ".")
        return PurePosixPath(*(into / safe_relative(repo_path)).parts)


@dataclass(frozen=True)
class CatalogEntry:
    """Where one downloaded asset's upstream files are: repository, revision and files."""

    name: str
    kind: str  # "model" or "dataset"
    repo: str
    repo_type: str
    revision: str
    files: tuple[FileSpec, ...]

    @property
    def downloadable(self) -> bool:
        return self.repo is not None

    def spec_for(self, repo_path: str) -> FileSpec | None:
        """The first catalog entry a repo file matches, or None if the catalog skips it."""
        return next((spec for spec in self.files if spec.matches(repo_path)), None)

    def destination(self, repo_path: str) -> PurePosixPath | None:
        """The asset-relative destination of a repo file, or None if the catalog skips it."""
        spec = self.spec_for(repo_path)
        return spec.destination(repo_path) if spec else None

    def expected_sha256(self, repo_path: str) -> str | None:
        """The SHA-256 the catalog expects for a repo file (only for a named file, not a glob)."""
        spec = self.spec_for(repo_path)
        return spec.sha256 if spec and spec.path == repo_path else None


class Catalog:
    def __init__(self, entries: dict[str, CatalogEntry], source: str) -> None:
        self._assets = entries
        self.source = source

    def model(self, name: str) -> CatalogEntry:
        return self._get(name, "model", MODELS)

    def dataset(self, name: str) -> CatalogEntry:
        return self._get(name, "dataset", DATASETS)

    def _get(self, name: str, kind: str, known: tuple[str, ...]) -> CatalogEntry:
        if name in assets.MICRO_MODELS:  # a model built from another one has no upstream
            base = assets.model(name).derived_from
            raise WmtpError(
                f"{name} is built from {base}, not downloaded",
                hint=f"run `wmtp models micro {name}`",
            )
        asset = self._assets.get(f"{kind}:{name}")
        if asset is None:
            raise WmtpError(
                f"the catalog has no {kind} {name!r}",
                path=self.source,
                hint=f"known {kind}s: {', '.join(known)}",
            )
        return asset


def _file_spec(entry: dict[str, Any], where: str, source: str) -> FileSpec:
    """A file entry whose `into` stays inside the asset folder (`.` is the folder itself)."""
    into = entry["into"].strip("/")
    if into not in ("", "."):
        try:
            safe_relative(into)
        except WmtpError:
            raise WmtpError(
                f"catalog entry {where}/into: {entry['into']!r} leaves the asset folder",
                path=source,
                hint="use a folder inside it, e.g. raw",
            ) from None
    if entry.get("sha256") and any(c in entry["path"] for c in "*?["):
        raise WmtpError(
            f"catalog entry {where}/sha256: a glob ({entry['path']!r}) matches several files",
            path=source,
            hint="give sha256 only on entries that name one file",
        )
    return FileSpec(entry["path"], entry["into"], entry.get("sha256"))


MOVED_TO_REGISTRY = ("format", "gated", "derived_from")


def _refuse_asset_properties(data: object, source: str) -> None:
    """Catalogs written for earlier versions declared formats and micro models; say where
    those went instead of a bare schema error."""
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        return  # the schema says what is wrong
    for name, entry in models.items():
        moved = [key for key in MOVED_TO_REGISTRY if isinstance(entry, dict) and key in entry]
        if moved or (name not in MODELS and name in assets.MODELS):
            raise WmtpError(
                f"catalog entry models/{name}: "
                + (f"{', '.join(moved)} no longer belong" if moved else "a built model has no")
                + " in the catalog (the asset registry, weighted_mtp/assets/__init__.py, "
                "declares them)",
                path=source,
                hint="remove them; the catalog only says where upstream files are",
            )


def _parse(text: str, source: str) -> Catalog:
    import jsonschema  # ~0.3 s with yaml: only when a command reads the catalog, not --help
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise WmtpError(f"catalog is not valid YAML{where}", path=source) from None
    _refuse_asset_properties(data, source)
    try:
        jsonschema.validate(data, SCHEMA)
    except jsonschema.ValidationError as exc:
        location = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise WmtpError(f"catalog entry {location}: {exc.message}", path=source) from None
    entries: dict[str, CatalogEntry] = {}
    for kind, group in (("model", data["models"]), ("dataset", data["datasets"])):
        for name, entry in group.items():
            files = [
                _file_spec(f, f"{kind}s/{name}/files/{i}", source)
                for i, f in enumerate(entry.get("files", []))
            ]
            entries[f"{kind}:{name}"] = CatalogEntry(
                name=name,
                kind=kind,
                repo=entry["repo"],
                repo_type=entry.get("repo_type", kind),
                revision=entry.get("revision", "main"),
                files=tuple(files),
            )
    return Catalog(entries, source)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The user's catalog if given (argument, then $WMTP_CATALOG), else the packaged one."""
    chosen = path or os.environ.get(CATALOG_ENV)
    if chosen:
        chosen = Path(chosen)
        try:
            text = chosen.read_text(encoding="utf-8")
        except OSError as exc:
            raise WmtpError(f"cannot read catalog: {exc.strerror}", path=chosen) from None
        return _parse(text, str(chosen))
    packaged = resources.files("weighted_mtp").joinpath("catalog.yaml")
    return _parse(packaged.read_text(encoding="utf-8"), "weighted_mtp/catalog.yaml")
