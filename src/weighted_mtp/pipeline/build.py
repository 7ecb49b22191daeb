"""`wmtp build`: every step that makes the storage, in order, idempotent and resumable.

Every step asks the freshness store (`storage.freshness`) whether its outputs are current: verified,
and neither they nor what they were built from changed since (a raw dataset file rewritten
reruns that dataset's prepare and small steps, nothing else). Current steps are skipped, so a
rerun after Ctrl-C or a kill picks up where the storage stands and ends in the state an
uninterrupted run reaches. Steps write their outputs atomically, so an interruption leaves at
most temporary files, which the next build removes. Timings go to the build log.

The manifest is refreshed after every step that changed assets and once more before the
checks, so it also records changes made outside the build (by `wmtp models convert`, say).
The summary names such files, and an approval given before them goes stale.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from weighted_mtp import assets
from weighted_mtp.assets import AssetSpec, BuildStep
from weighted_mtp.catalog import Catalog, CatalogEntry
from weighted_mtp.checks import Report
from weighted_mtp.clock import utc_now
from weighted_mtp.data.download import download_dataset
from weighted_mtp.data.prepare import prepare_dataset
from weighted_mtp.data.small import build_small
from weighted_mtp.data.validate import validate_dataset
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.models.convert import convert_model
from weighted_mtp.models.micro import build_micro
from weighted_mtp.models.upstream_download import download_model
from weighted_mtp.models.verify import verify_model
from weighted_mtp.pipeline.checklist import damaged_assets, run_checklist
from weighted_mtp.pipeline.manifest import (
    ManifestDiff,
    ManifestUpdate,
    refresh_manifest,
    sha256sums_mismatches,
)
from weighted_mtp.pipeline.plan import ASSET_GROUPS, LAST_ASSET_GROUP, plan_step
from weighted_mtp.pipeline.records import (
    document_status,
    last_checklist,
    saved_checklist,
)
from weighted_mtp.pipeline.report import generate_reports
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import read_json_or_none
from weighted_mtp.storage.init import init_storage
from weighted_mtp.storage.layout import DATASETS, Layout
from weighted_mtp.storage.lock import writing_to_storage


@dataclass
class BuildContext:
    layout: Layout
    catalog: Catalog
    mirror: Path | None = None
    refresh: frozenset[str] = frozenset()  # download steps to fetch again (--refresh)
    ran: list[str] = field(default_factory=list)  # steps this build has run so far

    def mirror_for(self, asset: str) -> Path | None:
        """`--mirror DIR` holds each asset's upstream files under DIR/<asset>/."""
        if self.mirror is None:
            return None
        folder = self.mirror / asset
        if not folder.is_dir():
            raise WmtpError(
                f"the mirror has no folder for {asset}",
                path=folder,
                hint="lay out each asset's upstream files under DIR/<asset-name>/",
            )
        return folder


@dataclass(frozen=True)
class Step:
    """A build step; `group` is the check group that verifies what it makes."""

    name: str
    group: str
    describe: str
    run: Callable[[BuildContext], None]
    done: Callable[[BuildContext], bool]
    changes_assets: bool = True
    origin: Callable[[BuildContext], str] | None = None  # where kept outputs came from

    @property
    def checklist_step(self) -> int:
        """The checklist's step number of its check group (for the log and the summary)."""
        return plan_step(self.group).number


@dataclass
class StepOutcome:
    name: str
    checklist_step: int
    status: str  # "ran", "skipped", "failed" or "interrupted"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class BuildResult:
    outcomes: list[StepOutcome] = field(default_factory=list)
    removed_leftovers: list[str] = field(default_factory=list)
    recheck: list[str] = field(default_factory=list)  # assets the last verify found damaged
    manifest_written: bool = False
    manifest_diff: ManifestDiff = field(default_factory=ManifestDiff)

    def to_dict(self) -> dict[str, Any]:
        """What `wmtp build --json` prints: each step's outcome and what the manifest got."""
        return {
            "steps": [asdict(o) for o in self.outcomes],
            "removed_leftovers": self.removed_leftovers,
            "recheck": self.recheck,
            "manifest_written": self.manifest_written,
            "manifest_diff": asdict(self.manifest_diff),
        }

    @property
    def changed_anything(self) -> bool:
        return self.manifest_written or any(o.status == "ran" for o in self.outcomes)

    def record(self, update: ManifestUpdate) -> None:
        """Accumulate what the manifest refreshes of this build recorded."""
        self.manifest_written |= update.written
        for kind in ("changed", "missing", "unexpected"):
            paths = getattr(self.manifest_diff, kind)
            paths += [p for p in getattr(update.diff, kind) if p not in paths]


# ---------------------------------------------------------------- "already done?" checks


def _verified(ctx: BuildContext, name: str, verify: Callable[[], Report]) -> bool:
    """Cheap: the store says the asset is current; else really verify it (which records it)."""
    if freshness.is_current(ctx.layout, name):
        return True
    try:
        return verify().ok
    except WmtpError:
        return False


def _kept_source(
    ctx: BuildContext, source_path: Path, asset: CatalogEntry, step: str
) -> dict[str, Any] | None:
    """The SOURCE.json of raw files a build keeps, whatever source they came from (a mirror
    or the hub), unless `--refresh` asks to fetch them again: it names this asset's repo and,
    when the catalog pins a commit and the files came from the hub, that commit."""
    if step in ctx.refresh:
        return None
    source = read_json_or_none(source_path, "SOURCE.json")
    if not isinstance(source, dict) or source.get("repo") != asset.repo:
        return None
    pinned = re.fullmatch(r"[0-9a-f]{40}", asset.revision) is not None
    from_hub = source.get("mirror") is None
    if pinned and from_hub and asset.revision not in (source.get("revision"), source.get("commit")):
        return None
    return source


def _describe_source(source: dict[str, Any]) -> str:
    """Where kept raw files came from, for the build's output and log."""
    when = source.get("downloaded_at")
    when = f", {when}" if when else ""
    if source.get("mirror"):
        return f"kept files from mirror {source['mirror']}{when}"
    commit = source.get("commit") or source.get("revision")
    return f"kept files from {source.get('repo')}@{commit}{when}"


def _origin(source_path: Path) -> str:
    source = read_json_or_none(source_path, "SOURCE.json")
    return _describe_source(source) if isinstance(source, dict) else "outputs already verify"


def _model_download_done(ctx: BuildContext, name: str, step: str) -> bool:
    paths = ctx.layout.model(name)
    source = _kept_source(ctx, paths.source, ctx.catalog.model(name), step)
    if source is None:
        return False
    files = source.get("files") or {}
    store = freshness.Store(ctx.layout)
    ok = bool(files) and all(
        isinstance(entry, dict)
        and paths.file(rel).is_file()
        and store.sha256(paths.file(rel)) == entry.get("sha256")
        for rel, entry in files.items()
    )
    store.save()
    return ok


def _dataset_download_done(ctx: BuildContext, name: str, step: str) -> bool:
    paths = ctx.layout.dataset(name)
    source = _kept_source(ctx, paths.source, ctx.catalog.dataset(name), step)
    if source is None or not paths.raw_checksums.is_file():
        return False
    store = freshness.Store(ctx.layout)
    try:
        count, bad = sha256sums_mismatches(ctx.layout, paths.raw_checksums, store)
    except WmtpError:
        return False
    store.save()
    return count > 0 and not bad


def _model_done(ctx: BuildContext, name: str) -> bool:
    paths = ctx.layout.model(name)
    return paths.weights.is_file() and _verified(ctx, name, lambda: verify_model(ctx.layout, name))


def _prepared_from_current_raw(ctx: BuildContext, name: str) -> bool:
    """The store's record says the processed files were made from the raw files there now
    (same fingerprints, or same hashes where a fingerprint moved); saved when it moved."""
    store = freshness.Store(ctx.layout)
    same = store.inputs_unchanged(name)
    store.save()
    return same


def _dataset_done(ctx: BuildContext, name: str) -> bool:
    """Prepared from the raw files there now, and the processed files verify."""
    return freshness.is_current(ctx.layout, name) or (
        _prepared_from_current_raw(ctx, name)
        and _verified(ctx, name, lambda: validate_dataset(ctx.layout, name))
    )


def _small_done(ctx: BuildContext, name: str) -> bool:
    """Sampled from the processed splits as they are now (or splits prepared again to the
    same bytes) and unchanged since."""
    store = freshness.Store(ctx.layout)
    done = store.current_or_same_inputs(freshness.small_key(name))
    store.save()
    return done


# ---------------------------------------------------------------- step actions


def _must_verify(report: Report, what: str) -> None:
    if not report.ok:
        failure = report.failures()[0] if report.failures() else None
        detail = f"{failure.name}: {failure.detail}" if failure else "no checks ran"
        files = ", ".join(failure.files) if failure and failure.files else None
        raise WmtpError(
            f"{what} does not verify after building it ({detail})",
            path=files,
            hint="see `wmtp verify` for every failed check",
        )


def _init(ctx: BuildContext) -> None:
    init_storage(ctx.layout)


def _init_done(ctx: BuildContext) -> bool:
    layout = ctx.layout
    return all(p.is_dir() for p in layout.directories()) and all(
        p.exists() for p in layout.placeholder_files()
    )


def _download_model(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        download_model(ctx.layout, ctx.catalog, name, mirror=ctx.mirror_for(name))

    return run


def _verify_built_model(ctx: BuildContext, name: str) -> None:
    """Verify a model just built; the store keeps the hashes read, so the manifest refresh
    that follows does not read the weights again."""
    _must_verify(verify_model(ctx.layout, name), name)


def _convert_model(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        convert_model(ctx.layout, name)
        _verify_built_model(ctx, name)

    return run


def _micro_model(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        build_micro(ctx.layout, name)
        _verify_built_model(ctx, name)

    return run


def _download_dataset(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        download_dataset(ctx.layout, ctx.catalog, name, mirror=ctx.mirror_for(name))

    return run


def _prepare_dataset(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        prepare_dataset(ctx.layout, name)

    return run


def _build_small(name: str) -> Callable[[BuildContext], None]:
    def run(ctx: BuildContext) -> None:
        build_small(ctx.layout, name)  # recorded in the store as made from the splits now

    return run


def _validate(ctx: BuildContext) -> None:
    for name in DATASETS:
        _must_verify(validate_dataset(ctx.layout, name), name)


def _validate_done(ctx: BuildContext) -> bool:
    """Nothing changed in this build, and every dataset is as validated. (Small sets are
    validated again by the verify step whenever the manifest moved.)"""
    store = freshness.Store(ctx.layout)
    return all(store.is_current(name) for name in DATASETS) and not ctx.ran


def _verify(ctx: BuildContext) -> None:
    checklist = run_checklist(ctx.layout, through=LAST_ASSET_GROUP)
    if not checklist.ok:
        failed = "; ".join(f"{s.label}: {s.reason}" for s in checklist.failed())
        raise WmtpError(f"verification failed: {failed}", hint="see `wmtp verify`")


def _verify_done(ctx: BuildContext) -> bool:
    """Every asset is current in the store, and the asset checks passed for the manifest the
    build has just refreshed from the store. `wmtp verify` itself always re-reads every byte."""
    store = freshness.Store(ctx.layout)
    saved = last_checklist(ctx.layout, store)
    return (
        saved is not None
        and all(step.ok for step in saved.steps if step.group in ASSET_GROUPS)
        and all(store.is_current(key) for key in freshness.asset_keys())
    )


def _report(ctx: BuildContext) -> None:
    generate_reports(ctx.layout)


def _report_done(ctx: BuildContext) -> bool:
    return all(ok for _path, ok, _detail in document_status(ctx.layout))


def _asset_step(spec: AssetSpec, kind: BuildStep) -> Step:
    """The build step of kind `kind` for the asset `spec`, named as docs/storage.md lists it."""
    name, short = spec.name, spec.step_prefix
    raw_group, built_group = spec.checks[0], spec.checks[-1]
    if kind == "download" and spec.is_model:
        step = f"download-{short}"
        return Step(
            step,
            raw_group,
            f"download {name}",
            _download_model(name),
            lambda ctx: _model_download_done(ctx, name, step),
            origin=lambda ctx: _origin(ctx.layout.model(name).source),
        )
    if kind == "download":
        step = f"download-{short}"
        return Step(
            step,
            raw_group,
            f"download {name}",
            _download_dataset(name),
            lambda ctx: _dataset_download_done(ctx, name, step),
            origin=lambda ctx: _origin(ctx.layout.dataset(name).source),
        )
    if kind == "convert":
        return Step(
            f"convert-{short}",
            built_group,
            f"convert {name}",
            _convert_model(name),
            lambda ctx: _model_done(ctx, name),
        )
    if kind == "micro":
        return Step(
            name,
            built_group,
            f"build {name}",
            _micro_model(name),
            lambda ctx: _model_done(ctx, name),
        )
    if kind == "prepare":
        return Step(
            f"prepare-{short}",
            built_group,
            f"prepare {name}",
            _prepare_dataset(name),
            lambda ctx: _dataset_done(ctx, name),
        )
    return Step(
        f"small-{short}",
        built_group,
        f"sample {name}_small",
        _build_small(name),
        lambda ctx: _small_done(ctx, name),
    )


def _steps() -> list[Step]:
    """Models before datasets; within each, every asset's first step before any second."""
    kinds: tuple[BuildStep, ...] = ("download", "convert", "micro", "prepare", "small")
    ordered = sorted(
        ((spec, kind) for spec in assets.ASSETS for kind in spec.build),
        key=lambda pair: (pair[0].is_dataset, kinds.index(pair[1])),
    )
    return [
        Step("init", "layout", "create the storage layout", _init, _init_done),
        *(_asset_step(spec, kind) for spec, kind in ordered),
        Step(
            "validate",
            "processed datasets",
            "validate every dataset",
            _validate,
            _validate_done,
            False,
        ),
        Step("verify", LAST_ASSET_GROUP, "verify every asset", _verify, _verify_done, False),
        Step(
            "report",
            "documents",
            "write reports and the storage README",
            _report,
            _report_done,
            False,
        ),
    ]


STEPS = _steps()
STEP_NAMES = [step.name for step in STEPS]


def _matches(step: Step, pattern: str) -> bool:
    """A step name, or a group: `download` selects every `download-*` step."""
    return step.name == pattern or step.name.startswith(pattern + "-")


def select_steps(only: list[str] | tuple[str, ...] = (), start: str | None = None) -> list[Step]:
    for pattern in [*only, *([start] if start else [])]:
        if not any(_matches(step, pattern) for step in STEPS):
            raise UsageError(
                f"unknown build step {pattern!r}", hint=f"steps: {', '.join(STEP_NAMES)}"
            )
    if only and start:
        raise UsageError("use --only or --from, not both")
    if only:
        return [step for step in STEPS if any(_matches(step, p) for p in only)]
    if start:
        first = next(i for i, step in enumerate(STEPS) if _matches(step, start))
        return STEPS[first:]
    return list(STEPS)


# ---------------------------------------------------------------- log, lock, engine


def _ends_a_line(handle: IO[bytes]) -> bool:
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return True
    handle.seek(end - 1)
    return handle.read(1) == b"\n"


def _log(layout: Layout, run_id: str, outcome: StepOutcome) -> None:
    entry = {
        "run": run_id,
        "step": outcome.name,
        "checklist_step": outcome.checklist_step,
        "status": outcome.status,
        "seconds": round(outcome.seconds, 3),
        "detail": outcome.detail,
        "at": utc_now(),
    }
    layout.build_log.parent.mkdir(parents=True, exist_ok=True)
    with layout.build_log.open("a+b") as handle:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        # A kill can cut the last line short: start a fresh line so this entry survives.
        handle.write((line if _ends_a_line(handle) else "\n" + line).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def _damaged_by_last_verify(layout: Layout) -> list[str]:
    """The assets the latest `wmtp verify` found damaged (it dropped their records in the
    store) that no build has made again since."""
    saved = saved_checklist(layout)
    if saved is None or saved.ok:
        return []
    store = freshness.Store(layout)
    return [key for key in damaged_assets(layout, saved) if store.record(key) is None]


Listener = Callable[[str, Step, StepOutcome | None], None]


def _run_step(ctx: BuildContext, step: Step, run_id: str, listener: Listener) -> StepOutcome:
    """Skip the step if its outputs verify, else run it; log the outcome either way."""
    listener("start", step, None)
    started = time.monotonic()
    status, detail = "failed", "crashed"
    try:
        if step.done(ctx):
            status = "skipped"
            detail = step.origin(ctx) if step.origin else "outputs already verify"
        else:
            step.run(ctx)
            ctx.ran.append(step.name)
            status, detail = "ran", ""
    except KeyboardInterrupt:
        status, detail = "interrupted", "Ctrl-C"
        raise
    except WmtpError as exc:
        detail = exc.line()
        raise
    finally:
        outcome = StepOutcome(
            step.name, step.checklist_step, status, time.monotonic() - started, detail
        )
        _log(ctx.layout, run_id, outcome)
        listener("end", step, outcome)
    return outcome


def build(
    layout: Layout,
    catalog: Catalog,
    *,
    mirror: str | Path | None = None,
    only: list[str] | tuple[str, ...] = (),
    start: str | None = None,
    refresh: bool = False,
    listener: Listener | None = None,
) -> BuildResult:
    """Run the selected steps in order; stops at the first failure (a WmtpError). Raw files
    already downloaded are kept whatever their source; `refresh` fetches the selected
    download steps again."""
    steps = select_steps(only, start)
    mirror_dir = Path(mirror).expanduser().absolute() if mirror is not None else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise WmtpError("mirror folder not found", path=mirror_dir)
    refreshed = frozenset(s.name for s in steps if refresh and s.name.startswith("download-"))
    ctx = BuildContext(layout, catalog, mirror_dir, refreshed)
    listener = listener or (lambda _event, _step, _outcome: None)
    result = BuildResult()
    layout.root.mkdir(parents=True, exist_ok=True)
    run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    with writing_to_storage(layout, "wmtp build") as removed:
        result.removed_leftovers = removed
        result.recheck = _damaged_by_last_verify(layout)
        for step in steps:
            if not step.changes_assets:  # checks and documents see the assets as recorded
                result.record(refresh_manifest(layout))
            outcome = _run_step(ctx, step, run_id, listener)
            result.outcomes.append(outcome)
            if outcome.status == "ran" and step.changes_assets:
                result.record(refresh_manifest(layout))
        result.record(refresh_manifest(layout))
    return result
