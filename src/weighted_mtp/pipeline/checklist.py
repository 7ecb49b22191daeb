"""The completion checklist, decided from the storage itself, one check group per subject.

Each group is a `Report` of concrete checks, so a ✘ always says which check failed, why, and
which files are concerned. Asset-level checks come from the models' `verify_model` and the
datasets' `validate_dataset`; the registry says which assets each group covers. This
module adds what only the whole storage can tell (layout, manifest, leftovers, documents,
approval). The step numbers are `pipeline.plan`'s business. A run re-reads every
byte and records what it read in the freshness store (`storage.freshness`): every hash, each
asset that passed, the loss of the records of damaged assets, and the saved checklist as made
from the current manifest.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from functools import partial
from pathlib import Path

from weighted_mtp import assets, progress
from weighted_mtp.checks import Report
from weighted_mtp.data.validate import validate_dataset
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.verify import verify_model
from weighted_mtp.pipeline.backup_record import backup_status
from weighted_mtp.pipeline.manifest import (
    compare_with_manifest,
    iter_leftovers,
    load_manifest,
    manifest_sha256,
    sha256sums_mismatches,
)
from weighted_mtp.pipeline.plan import (
    BEFORE_APPROVAL,
    LAST_ASSET_GROUP,
    groups_through,
    plan_step,
)
from weighted_mtp.pipeline.records import (
    Checklist,
    StepResult,
    approval_status,
    document_status,
    tag_status,
)
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import read_json, write_json
from weighted_mtp.storage.layout import SPLITS, STORAGE_VERSION, Layout

REQUIRED_PACKAGES = (
    "torch",
    "safetensors",
    "sentencepiece",
    "transformers",
    "huggingface_hub",
    "pyarrow",
    "jsonschema",
)


class _Run:
    """State shared by the steps of one checklist run: every file is read at most once, and
    what is read is recorded in the freshness store."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.store = freshness.Store(layout, trust_known=False)
        self.differs_from_manifest: list[str] = []
        self.results: list[StepResult] = []  # the groups checked so far

    def rel(self, path: Path) -> str:
        return self.layout.relative(path)

    def add_asset_report(self, report: Report, produce: Callable[[], Report], label: str) -> None:
        """Copy an asset verification's checks into a step, prefixed with the asset name."""
        try:
            result = produce()
        except WmtpError as exc:
            report.add(label, False, exc.line(), [exc.path] if exc.path else [])
            return
        for check in result.checks:
            report.add(f"{label}: {check.name}", check.ok, check.detail, check.files)
        if not result.checks:
            report.add(label, False, "verification ran no checks")

    def hashes_match(self, report: Report, name: str, sums: Path) -> None:
        """Check a `sha256sum -c` file against the files it names."""
        if not sums.is_file() or sums.stat().st_size == 0:
            report.add(name, False, "checksum file missing or empty", [self.rel(sums)])
            return
        try:
            count, bad = sha256sums_mismatches(self.layout, sums, self.store)
        except WmtpError as exc:
            report.add(name, False, exc.line(), [self.rel(sums)])
            return
        detail = f"{len(bad)} of {count} file(s) differ" if bad else f"{count} file(s) match"
        report.add(name, not bad, detail, bad or [self.rel(sums)])


def check_environment(run: _Run, report: Report) -> None:
    layout = run.layout
    legacy = [run.rel(p) for p in layout.legacy_dirs() if p.exists()]
    report.add(
        "no legacy models/ or datasets/",
        not legacy,
        "remove with `wmtp storage clean --legacy --yes`" if legacy else "",
        legacy,
    )
    leftovers = [run.rel(p) for p in iter_leftovers(layout)]
    report.add(
        "no leftovers of interrupted writes",
        not leftovers,
        "rerun `wmtp build` to finish and clean up" if leftovers else "",
        leftovers,
    )
    missing = []
    for package in REQUIRED_PACKAGES:
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    report.add(
        "environment installed",
        not missing,
        f"missing packages: {', '.join(missing)}; run `uv sync`" if missing else "",
    )


def check_layout(run: _Run, report: Report) -> None:
    layout = run.layout
    missing = [run.rel(p) for p in layout.directories() if not p.is_dir()]
    missing += [run.rel(p) for p in layout.placeholder_files() if not p.exists()]
    report.add(
        "layout folders present",
        not missing,
        "run `wmtp storage init`" if missing else f"{len(layout.directories())} folders",
        missing,
    )


def check_raw_models(run: _Run, report: Report) -> None:
    """Every file the download recorded in SOURCE.json is present with its recorded hash."""
    for name in assets.checked_by("raw models"):
        paths = run.layout.model(name)
        if not paths.source.is_file():
            report.add(
                f"{name}: raw files",
                False,
                "no SOURCE.json: not downloaded",
                [run.rel(paths.source)],
            )
            continue
        try:
            files = read_json(paths.source, "SOURCE.json").get("files") or {}
        except WmtpError as exc:
            report.add(f"{name}: raw files", False, exc.line(), [run.rel(paths.source)])
            continue
        bad = [
            run.rel(paths.file(rel))
            for rel, entry in files.items()
            if not paths.file(rel).is_file()
            or run.store.sha256(paths.file(rel)) != entry.get("sha256")
        ]
        detail = (
            f"{len(bad)} of {len(files)} differ from SOURCE.json"
            if bad
            else f"{len(files)} match SOURCE.json"
            if files
            else "SOURCE.json lists no files"
        )
        report.add(
            f"{name}: raw files", bool(files) and not bad, detail, bad or [run.rel(paths.source)]
        )


def _verify_models(group: str) -> Callable[[_Run, Report], None]:
    """The check group that runs `verify_model` on every model the registry puts in it."""

    def check(run: _Run, report: Report) -> None:
        for name in assets.checked_by(group):
            verify = partial(verify_model, run.layout, name, store=run.store)
            run.add_asset_report(report, verify, name)

    return check


def check_raw_datasets(run: _Run, report: Report) -> None:
    for name in assets.checked_by("raw datasets"):
        paths = run.layout.dataset(name)
        report.add(
            f"{name}: SOURCE.json",
            paths.source.is_file(),
            "" if paths.source.is_file() else "not downloaded",
            [run.rel(paths.source)],
        )
        run.hashes_match(report, f"{name}: raw checksums", paths.raw_checksums)


def check_dataset_code(run: _Run, report: Report) -> None:
    for module, function in (
        ("weighted_mtp.data.prepare", "prepare_dataset"),
        ("weighted_mtp.data.validate", "validate_dataset"),
        ("weighted_mtp.data.small", "build_small"),
    ):
        try:
            ok = callable(getattr(importlib.import_module(module), function, None))
        except ImportError as exc:
            report.add(f"{module}.{function}", False, f"cannot import: {exc}")
            continue
        report.add(f"{module}.{function}", ok, "" if ok else "missing")
    missing = [
        run.rel(run.layout.dataset(n).schema)
        for n in assets.DATASETS
        if not run.layout.dataset(n).schema.is_file()
    ]
    report.add("processed schema.json written", not missing, "", missing)


def _small_present(run: _Run, report: Report, name: str) -> None:
    """Limits and provenance of small sets are `validate_dataset`'s; here: that they exist."""
    small = run.layout.small(name)
    present = [split for split in SPLITS if small.split(split).is_file()]
    report.add(
        f"{name}_small present",
        bool(present),
        f"splits: {', '.join(present)}"
        if present
        else f"missing; run `wmtp build --only small-{name}`",
        [run.rel(small.root)],
    )


def check_processed_datasets(run: _Run, report: Report) -> None:
    for name in assets.checked_by("processed datasets"):
        run.add_asset_report(report, partial(validate_dataset, run.layout, name), name)
        _small_present(run, report, name)


def check_integrity(run: _Run, report: Report) -> None:
    layout = run.layout
    try:
        manifest = load_manifest(layout)
    except WmtpError as exc:
        report.add("MANIFEST.json", False, exc.line(), [run.rel(layout.manifest)])
        return
    if manifest is None:
        report.add("MANIFEST.json", False, "missing; run `wmtp build`", [run.rel(layout.manifest)])
        return
    version = manifest["storage_version"]
    report.add(
        "storage version",
        version == STORAGE_VERSION,
        f"{version}" + ("" if version == STORAGE_VERSION else f", expected {STORAGE_VERSION}"),
    )
    diff = compare_with_manifest(layout, manifest, run.store)
    run.differs_from_manifest = diff.files()
    report.add(
        "tree matches MANIFEST.json",
        diff.ok,
        f"{diff.summary()}; `wmtp build` rebuilds damaged files and records the rest"
        if not diff.ok
        else f"{len(manifest['files'])} files",
        diff.files(),
    )
    for name in assets.MODELS:
        run.hashes_match(report, f"{name}: safetensors/SHA256SUMS", layout.model(name).sha256sums)
    run.hashes_match(report, "SHA256SUMS (whole storage)", layout.checksums)


def check_documents(run: _Run, report: Report) -> None:
    for path, ok, detail in document_status(run.layout):
        report.add(run.rel(path), ok, detail, [run.rel(path)])


def check_approval(run: _Run, report: Report) -> None:
    """The sign-off: approval signature, tag and a verified backup, each of exactly
    the current manifest (any later change makes them stale)."""
    failed = [s.label for s in run.results if not s.ok]
    first, last = (plan_step(g).number for g in (BEFORE_APPROVAL[0], BEFORE_APPROVAL[-1]))
    report.add(
        f"Steps {first}-{last} all ✔", not failed, ", ".join(failed) + " failed" if failed else ""
    )
    ok, detail, files = approval_status(run.layout, run.differs_from_manifest)
    report.add("approval", ok, detail, files)
    report.add("tag", *tag_status(run.layout))
    report.add("backup", *backup_status(run.layout, run.differs_from_manifest))


CHECKS: dict[str, Callable[[_Run, Report], None]] = {
    "environment": check_environment,
    "layout": check_layout,
    "raw models": check_raw_models,
    "Meta model": _verify_models("Meta model"),
    "reference": _verify_models("reference"),
    "micro": _verify_models("micro"),
    "raw datasets": check_raw_datasets,
    "dataset code": check_dataset_code,
    "processed datasets": check_processed_datasets,
    "integrity": check_integrity,
    "documents": check_documents,
    "approval": check_approval,
}


def damaged_assets(layout: Layout, checklist: Checklist) -> list[str]:
    """The assets (store keys) that a failed check of `checklist` names or holds files of."""
    failures = [c for step in checklist.failed() for c in step.report.failures()]
    files = {f for c in failures for f in c.files}
    damaged = []
    for key in freshness.asset_keys():
        prefix = layout.relative(freshness.asset_root(layout, key)) + "/"
        named = any(c.name == key or c.name.startswith(f"{key}:") for c in failures)
        if named or any(f.startswith(prefix) for f in files):
            damaged.append(key)
    return damaged


def _record_in_store(run: _Run, checklist: Checklist) -> None:
    """The freshness store learns what this run read: every hash, the checklist as made from
    the current MANIFEST.json, and the loss of the records of damaged assets (so the next
    build makes them again even when their fingerprints look unchanged, e.g. a flipped bit)."""
    run.store.record_verified(freshness.VERIFICATION, built_now=True)
    for key in damaged_assets(run.layout, checklist):
        run.store.clear(key)
    run.store.save()


def run_checklist(layout: Layout, *, through: str = "approval", save: bool = True) -> Checklist:
    """Run the check groups up to `through` in checklist order, re-reading every asset
    file's bytes once (no hash is trusted from an earlier run); the NaN/Inf scan reads the
    model weights a second time. A run through the asset groups is saved and recorded in the
    freshness store."""
    if not layout.root.is_dir():
        raise WmtpError(
            "storage root does not exist",
            path=layout.root,
            hint="run `wmtp build` (or `wmtp demo` to try it offline)",
        )
    run = _Run(layout)
    for group in groups_through(through):
        report = Report(group)
        with progress.status(f"checking {group}"):
            CHECKS[group](run, report)
        run.results.append(StepResult(group, report))
    checklist = Checklist(run.results, manifest_sha256(layout))
    if save and LAST_ASSET_GROUP in groups_through(through):
        write_json(layout.last_verification, checklist.to_dict())
        _record_in_store(run, checklist)
    else:
        run.store.save()
    return checklist
