"""The seed's completion checklist, Step 0 to Step 11, decided from the storage itself.

Each step is a `Report` of concrete checks, so a ✘ always says which check failed, why, and
which files are concerned. Asset-level checks come from the models' `verify_model` and the
datasets' `validate_dataset`; this module adds what only the whole storage can tell (layout,
manifest, leftovers, documents, approval).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from weighted_mtp.checks import Report
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.pipeline.manifest import (
    Hasher,
    compare_with_manifest,
    iter_leftovers,
    load_manifest,
    manifest_sha256,
    sha256sums_mismatches,
)
from weighted_mtp.storage.atomic import read_json, write_json
from weighted_mtp.storage.layout import (
    BASE_MODELS,
    DATASETS,
    META_MODEL,
    MICRO_MODELS,
    REFERENCE_MODEL,
    SPLITS,
    STORAGE_VERSION,
    Layout,
)

STEP_TITLES = {
    0: "clean start, environment ready",
    1: "v2 directory layout",
    2: "raw model downloads (Meta 7B_1T_4, Sheared-LLaMA 2.7B)",
    3: "Meta MTP model converted and verified",
    4: "reference model converted and verified",
    5: "micro models built and verified",
    6: "raw datasets (CodeContests, MBPP, HumanEval)",
    7: "preprocessing and validation code",
    8: "processed datasets, stats and small sets",
    9: "integrity of every asset (manifest, checksums)",
    10: "documents (README, reports) match the storage",
    11: "checklist complete, approved, tagged and backed up",
}
LAST_ASSET_STEP = 9
SIGN_OFF_STEP = 11  # approval, tag and backup of the current manifest
MAX_REASON = 120  # longer lists of passed checks are summarised by their count
REQUIRED_PACKAGES = (
    "torch",
    "safetensors",
    "sentencepiece",
    "transformers",
    "huggingface_hub",
    "pyarrow",
    "jsonschema",
)


@dataclass
class StepResult:
    number: int
    report: Report

    @property
    def title(self) -> str:
        return STEP_TITLES[self.number]

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def reason(self) -> str:
        failures = self.report.failures()
        if failures:
            return "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in failures)
        details = "; ".join(f"{c.name}: {c.detail}" for c in self.report.checks if c.detail)
        if details and len(details) <= MAX_REASON:
            return details
        return f"all {len(self.report.checks)} checks passed"

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(f for c in self.report.failures() for f in c.files))

    def to_dict(self) -> dict:
        return {
            "step": self.number,
            "title": self.title,
            "ok": self.ok,
            "reason": self.reason,
            "files": self.files,
            "checks": self.report.to_dict()["checks"],
        }


@dataclass
class Checklist:
    steps: list[StepResult]
    manifest_sha256: str | None
    checked_at: str = field(default_factory=utc_now)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def failed(self) -> list[StepResult]:
        return [step for step in self.steps if not step.ok]

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "storage_version": STORAGE_VERSION,
            "checked_at": self.checked_at,
            "manifest_sha256": self.manifest_sha256,
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Checklist:
        steps = []
        for item in data["steps"]:
            report = Report(f"Step {item['step']}")
            for check in item["checks"]:
                report.add(check["name"], check["ok"], check["detail"], check["files"])
            steps.append(StepResult(item["step"], report))
        return cls(steps, data["manifest_sha256"], data["checked_at"])


class _Run:
    """State shared by the steps of one checklist run: every file is hashed at most once."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.hasher = Hasher(layout, trust_known=False)
        self.differs_from_manifest: list[str] = []

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
            count, bad = sha256sums_mismatches(self.layout, sums, self.hasher)
        except WmtpError as exc:
            report.add(name, False, exc.line(), [self.rel(sums)])
            return
        detail = f"{len(bad)} of {count} file(s) differ" if bad else f"{count} file(s) match"
        report.add(name, not bad, detail, bad or [self.rel(sums)])


def _step0(run: _Run, report: Report) -> None:
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


def _step1(run: _Run, report: Report) -> None:
    layout = run.layout
    missing = [run.rel(p) for p in layout.directories() if not p.is_dir()]
    missing += [run.rel(p) for p in layout.placeholder_files() if not p.exists()]
    report.add(
        "v2 folders present",
        not missing,
        "run `wmtp storage init`" if missing else f"{len(layout.directories())} folders",
        missing,
    )


def _step2(run: _Run, report: Report) -> None:
    """Every file the download recorded in SOURCE.json is present with its recorded hash."""
    for name in BASE_MODELS:
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
            or run.hasher.sha256(paths.file(rel)) != entry.get("sha256")
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


def _verify_models(run: _Run, report: Report, names: tuple[str, ...]) -> None:
    from weighted_mtp.models.verify import verify_model

    for name in names:
        run.add_asset_report(
            report, lambda n=name: verify_model(run.layout, n, sha256=run.hasher.sha256), name
        )


def _step3(run: _Run, report: Report) -> None:
    _verify_models(run, report, (META_MODEL,))


def _step4(run: _Run, report: Report) -> None:
    _verify_models(run, report, (REFERENCE_MODEL,))


def _step5(run: _Run, report: Report) -> None:
    _verify_models(run, report, MICRO_MODELS)


def _step6(run: _Run, report: Report) -> None:
    for name in DATASETS:
        paths = run.layout.dataset(name)
        report.add(
            f"{name}: SOURCE.json",
            paths.source.is_file(),
            "" if paths.source.is_file() else "not downloaded",
            [run.rel(paths.source)],
        )
        run.hashes_match(report, f"{name}: raw checksums", paths.raw_checksums)


def _step7(run: _Run, report: Report) -> None:
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
        for n in DATASETS
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


def _step8(run: _Run, report: Report) -> None:
    from weighted_mtp.data.validate import validate_dataset

    for name in DATASETS:
        run.add_asset_report(report, lambda n=name: validate_dataset(run.layout, n), name)
        _small_present(run, report, name)


def _step9(run: _Run, report: Report) -> None:
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
    diff = compare_with_manifest(layout, manifest, run.hasher)
    run.differs_from_manifest = diff.files()
    report.add(
        "tree matches MANIFEST.json",
        diff.ok,
        f"{diff.summary()}; `wmtp build` rebuilds damaged files and records the rest"
        if not diff.ok
        else f"{len(manifest['files'])} files",
        diff.files(),
    )
    for name in (*BASE_MODELS, *MICRO_MODELS):
        run.hashes_match(report, f"{name}: safetensors/SHA256SUMS", layout.model(name).sha256sums)
    run.hashes_match(report, "SHA256SUMS (whole storage)", layout.checksums)


def _step10(run: _Run, report: Report) -> None:
    from weighted_mtp.pipeline.report import document_status

    for path, ok, detail in document_status(run.layout):
        report.add(run.rel(path), ok, detail, [run.rel(path)])


def _step11(run: _Run, report: Report, earlier: list[StepResult]) -> None:
    """The plan's sign-off: approval signature, tag and a verified backup, each of exactly
    the current manifest (any later change makes them stale)."""
    from weighted_mtp.pipeline.approve import approval_status, tag_status
    from weighted_mtp.pipeline.backup_record import backup_status

    failed = [f"Step {s.number}" for s in earlier if not s.ok]
    report.add("Steps 0-10 all ✔", not failed, ", ".join(failed) + " failed" if failed else "")
    ok, detail, files = approval_status(run.layout, run.differs_from_manifest)
    report.add("approval", ok, detail, files)
    report.add("tag", *tag_status(run.layout))
    report.add("backup", *backup_status(run.layout, run.differs_from_manifest))


STEPS: dict[int, Callable[[_Run, Report], None]] = {
    0: _step0,
    1: _step1,
    2: _step2,
    3: _step3,
    4: _step4,
    5: _step5,
    6: _step6,
    7: _step7,
    8: _step8,
    9: _step9,
    10: _step10,
}


def run_checklist(layout: Layout, *, through: int = 11, save: bool = True) -> Checklist:
    """Run Steps 0..`through`, re-reading every asset file's bytes once (no hash is trusted
    from an earlier run); the NaN/Inf scan reads the model weights a second time."""
    if not layout.root.is_dir():
        raise WmtpError(
            "storage root does not exist",
            path=layout.root,
            hint="run `wmtp build` (or `wmtp demo` to try it offline)",
        )
    run = _Run(layout)
    results: list[StepResult] = []
    for number in range(through + 1):
        report = Report(f"Step {number}: {STEP_TITLES[number]}")
        if number == 11:
            _step11(run, report, results)
        else:
            STEPS[number](run, report)
        results.append(StepResult(number, report))
    checklist = Checklist(results, manifest_sha256(layout))
    if save and through >= LAST_ASSET_STEP:
        write_json(layout.last_verification, checklist.to_dict())
    return checklist


def saved_checklist(layout: Layout) -> Checklist | None:
    """The latest saved run, whatever storage state it describes."""
    if not layout.last_verification.is_file():
        return None
    try:
        return Checklist.from_dict(read_json(layout.last_verification, "last verification"))
    except (WmtpError, KeyError, TypeError):
        return None


def last_checklist(layout: Layout) -> Checklist | None:
    """The latest saved run, if it still describes the current manifest."""
    checklist = saved_checklist(layout)
    if checklist is None:
        return None
    current = manifest_sha256(layout)
    return checklist if current and checklist.manifest_sha256 == current else None
