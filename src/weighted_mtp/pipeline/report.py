"""Documents generated from the storage's actual state: reports and the storage README.

Written by hand, inventories and reports drift from the assets; here every number comes from
MANIFEST.json, metadata.json, SOURCE.json, dataset summaries and the build log. The text is
in template files (`pipeline/templates/*.md`); this module computes what fills them. Each
document names the manifest SHA-256 it describes, which is how `verify` tells a current
document from a stale one (`records.document_status`). migration_notes.md keeps everything
below its people's-notes marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from weighted_mtp import __version__, assets
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.hf_tokenizer import SENTENCEPIECE_KEY
from weighted_mtp.models.metadata import ModelMetadata, read_metadata
from weighted_mtp.pipeline.checklist import run_checklist
from weighted_mtp.pipeline.manifest import (
    compare_with_manifest,
    load_manifest,
    manifest_sha256,
)
from weighted_mtp.pipeline.plan import ASSET_GROUPS, LAST_ASSET_GROUP, label, plan_step
from weighted_mtp.pipeline.records import (
    COMPLETION,
    INVENTORY,
    MIGRATION,
    Checklist,
    last_checklist,
    last_timings,
    load_approvals,
)
from weighted_mtp.storage.atomic import read_json_or_none, write_text
from weighted_mtp.storage.freshness import Store
from weighted_mtp.storage.layout import DATASETS, MODELS, SPLITS, STORAGE_VERSION, Layout
from weighted_mtp.storage.status import TreeNode, storage_tree
from weighted_mtp.storage.tree import human_size

PEOPLE_MARKER = "<!-- people's notes: everything below this line is kept by `wmtp report` -->"
PEOPLE_HEADING = "## Notes from people"


def render(template: str, **values: Any) -> str:
    """A template file of this package with `$name` placeholders filled in."""
    text = resources.files(__package__).joinpath("templates", template).read_text("utf-8")
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def _lines(lines: list[str]) -> str:
    return "\n".join(lines)


# ---------------------------------------------------------------- reading the storage


def _metadata(layout: Layout, name: str) -> ModelMetadata | None:
    """A model's metadata.json if it is there and valid (else the checklist says why)."""
    path = layout.model(name).metadata
    try:
        return read_metadata(path) if path.is_file() else None
    except WmtpError:
        return None


def _summary(layout: Layout, name: str) -> dict[str, Any] | None:
    summaries = layout.dataset(name).summaries()
    summary: dict[str, Any] | None = read_json_or_none(summaries[-1] if summaries else None)
    return summary


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def _files_under(manifest: dict[str, Any] | None, prefix: str) -> list[dict[str, Any]]:
    entries = manifest["files"] if manifest else []
    return [e for e in entries if e["path"].startswith(prefix + "/")]


def _file_table(entries: list[dict[str, Any]]) -> list[str]:
    if not entries:
        return ["(no files recorded in MANIFEST.json)", ""]
    lines = ["| file | size | sha256 |", "| --- | --- | --- |"]
    lines += [f"| `{e['path']}` | {human_size(e['size'])} | `{e['sha256']}` |" for e in entries]
    return [*lines, ""]


def _header(title: str, layout: Layout, manifest_sha: str | None) -> str:
    return render(
        "header.md",
        title=title,
        now=utc_now(),
        version=__version__,
        root=layout.root,
        storage_version=STORAGE_VERSION,
        manifest_sha=manifest_sha or "none",
    )


# ---------------------------------------------------------------- documents


def _model_row(name: str, meta: ModelMetadata | None) -> str:
    if meta is None:
        return f"| {name} | missing | | | | | |"
    return (
        f"| {name} | {meta.format} | {meta.dtype} ({meta.source_dtype}) "
        f"| {meta.parameter_count:,} | {human_size(meta.weights.size)} "
        f"| {meta.tokenizer.vocab_size} | {meta.tokenizer_shared_with or '-'} |"
    )


def _files_sections(layout: Layout, manifest: dict[str, Any] | None, roots: dict[str, Path]) -> str:
    lines = []
    for title, root in roots.items():
        lines += [f"### {title}", ""]
        lines += _file_table(_files_under(manifest, layout.relative(root)))
    return _lines(lines)


def _dataset_rows(layout: Layout) -> list[str]:
    rows = []
    for name in DATASETS:
        paths = layout.dataset(name)
        splits = (_summary(layout, name) or {}).get("splits", {})
        for split in SPLITS:
            if not paths.split(split).is_file():
                continue
            stats = splits.get(split, {})
            rows.append(
                f"| {name} | {split} | {_count_lines(paths.split(split))} "
                f"| {stats.get('tasks', '?')} | {stats.get('dropped', '?')} "
                f"| {stats.get('shortened', '?')} | {stats.get('truncated', '?')} |"
            )
    return rows


def inventory(layout: Layout, manifest: dict[str, Any] | None, manifest_sha: str | None) -> str:
    small_rows = [
        f"| {name}_small | {split} | {_count_lines(layout.small(name).split(split))} |"
        for name in DATASETS
        for split in SPLITS
        if layout.small(name).split(split).is_file()
    ]
    return render(
        "asset_inventory.md",
        header=_header("Asset inventory", layout, manifest_sha),
        model_rows=_lines([_model_row(n, _metadata(layout, n)) for n in MODELS]),
        model_files=_files_sections(layout, manifest, {n: layout.model(n).root for n in MODELS}),
        dataset_rows=_lines(_dataset_rows(layout)),
        dataset_files=_files_sections(
            layout, manifest, {n: layout.dataset(n).root for n in DATASETS}
        ),
        small_rows=_lines(small_rows),
        small_files=_files_sections(
            layout, manifest, {f"{n}_small": layout.small(n).root for n in DATASETS}
        ),
    )


def _checklist_step(entry: dict[str, Any]) -> object:
    """The step number a build log entry records (`seed_step` in logs of wmtp 0.1.0)."""
    return entry.get("checklist_step", entry.get("seed_step", "?"))


def _timings(layout: Layout) -> str:
    timings = last_timings(layout)
    if not timings:
        return _lines(["No build log yet (`wmtp build` writes `.wmtp/build_log.jsonl`).", ""])
    lines = ["| build step | checklist step | seconds | finished at |", "| --- | --- | --- | --- |"]
    for step, entry in timings.items():
        lines.append(
            f"| {step} | {_checklist_step(entry)} | {entry['seconds']:.1f} | {entry['at']} |"
        )
    return _lines([*lines, ""])


def _open_problems(checklist: Checklist) -> str:
    problems = [
        f"- {s.label} ({s.title}): {s.reason}"
        + (f" — files: {', '.join(f'`{f}`' for f in s.files)}" if s.files else "")
        for s in checklist.failed()
    ]
    return _lines(problems or ["- none: every verified step passed"])


def _approvals(layout: Layout) -> str:
    try:
        approvals = load_approvals(layout)
    except WmtpError as exc:
        return f"- unreadable: {exc.line()}"
    lines = [
        f"- {a.get('by')} at {a.get('at')} (manifest `{a.get('manifest_sha256')}`)"
        for a in approvals
    ]
    return _lines(lines or ["- none yet"])


def completion_report(layout: Layout, checklist: Checklist, manifest_sha: str | None) -> str:
    steps = [
        f"- {'✔' if step.ok else '✘'} {step.label}: {step.title} — {step.reason}"
        for step in checklist.steps
        if step.group in ASSET_GROUPS
    ]
    return render(
        "completion_report.md",
        header=_header("Completion report", layout, manifest_sha),
        checked_at=checklist.checked_at,
        checklist=_lines(steps),
        documents_label=label("documents"),
        documents_title=plan_step("documents").title,
        approval_label=label("approval"),
        approval_title=plan_step("approval").title,
        timings=_timings(layout),
        open_problems=_open_problems(checklist),
        approvals=_approvals(layout),
    )


def _model_deviations(layout: Layout) -> Iterator[str]:
    for name in MODELS:
        meta = _metadata(layout, name)
        if meta is None:
            continue
        if meta.dtype != meta.source_dtype:
            yield f"- {name}: weights converted from {meta.source_dtype} to {meta.dtype}"
        trimmed = meta.tokenizer_trimmed
        if trimmed:
            yield (
                f"- {name}: tokenizer trimmed from {trimmed.base}'s "
                f"{trimmed.base_vocab_size} to {trimmed.vocab_size} pieces"
                + _moved_characters(trimmed.replaced)
            )
        if meta.init == "random":
            yield f"- {name}: randomly initialised (seed {meta.seed}), not sliced"
        if meta.tokenizer_difference:
            yield f"- {name}: tokenizer differs: {meta.tokenizer_difference}"
        elif assets.compares_tokenizer(name) and not meta.tokenizer_shared_with:
            yield f"- {name}: tokenizer not recorded as shared with {assets.TOKENIZER_MODEL}"


def _moved_characters(replaced: dict[int, str]) -> str:
    if not replaced:
        return ""
    ids = sorted(replaced)
    return (
        f"; its {len(ids)} rarest merges (ids {ids[0]}-{ids[-1]}) hold the single characters"
        " its kept pieces are made of instead (the whitespace piece among them), so that"
        " transformers gives SentencePiece's ids"
    )


def _tokenizer_config_deviation(layout: Layout) -> Iterator[str]:
    """tokenizer_config.json departs from the plan's literal keys (once for all models)."""
    names = [
        name
        for name in MODELS
        if SENTENCEPIECE_KEY in (read_json_or_none(layout.model(name).tokenizer_config) or {})
    ]
    if names:
        yield (
            f"- tokenizer/tokenizer_config.json ({', '.join(names)}): the plan's SentencePiece"
            f" facts (model type, vocab size, special ids) are under `{SENTENCEPIECE_KEY}`, not"
            " the plan's top-level `model_type: sentencepiece`, which transformers reads as a"
            " model type (AutoTokenizer could not load the folder); `tokenizer.json` beside it"
            " gives SentencePiece's ids in transformers"
        )


def _dataset_deviations(layout: Layout) -> Iterator[str]:
    for name in DATASETS:
        summary = _summary(layout, name)
        if summary is None:
            continue
        for split, stats in summary.get("splits", {}).items():
            counts = {
                key: stats.get(key, 0)
                for key in (
                    "dropped",
                    "shortened",
                    "truncated",
                    "duplicates",
                    "cross_split_duplicates",
                )
            }
            found = [f"{count} {key.replace('_', ' ')}" for key, count in counts.items() if count]
            if found:
                yield (
                    f"- {name} {split}: {', '.join(found)} of {stats.get('records', '?')} "
                    f"kept records (max length {summary.get('max_length')})"
                )


def _source_deviations(layout: Layout) -> Iterator[str]:
    for name, path in layout.sources().items():
        source = read_json_or_none(path)
        if source and source.get("mirror"):
            yield f"- {name}: taken from the mirror `{source['mirror']}`, not from the hub"


def people_notes(layout: Layout) -> str:
    """What people wrote below the marker of the current migration notes (kept verbatim)."""
    path = layout.report(MIGRATION)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if PEOPLE_MARKER in text:
            return text.split(PEOPLE_MARKER, 1)[1].lstrip("\n")
    return (
        f"{PEOPLE_HEADING}\n\nRisks, decisions and follow-up work that the storage cannot "
        "tell by itself. Add them below; `wmtp report` keeps this section.\n"
    )


def migration_notes(layout: Layout, checklist: Checklist, manifest_sha: str | None) -> str:
    found = [
        *_model_deviations(layout),
        *_tokenizer_config_deviation(layout),
        *_dataset_deviations(layout),
        *_source_deviations(layout),
    ]
    return render(
        "migration_notes.md",
        header=_header("Migration notes", layout, manifest_sha),
        deviations=_lines(found or ["- none"]),
        open_problems=_open_problems(checklist),
        people_marker=PEOPLE_MARKER,
        people_notes=people_notes(layout),
    )


def _sources_table(layout: Layout) -> str:
    lines = ["| asset | upstream | revision | mirror |", "| --- | --- | --- | --- |"]
    for name, path in layout.sources().items():
        source = read_json_or_none(path) or {}
        repo = source.get("repo")
        link = f"[{repo}](https://huggingface.co/{repo})" if repo else "not downloaded"
        lines.append(
            f"| {name} | {link} | `{source.get('revision', '-')}` | {source.get('mirror') or '-'} |"
        )
    for name in MODELS:
        meta = _metadata(layout, name)
        if meta and meta.derived_from:
            lines.append(f"| {name} | derived from {meta.derived_from} | - | - |")
    return _lines([*lines, ""])


def _tree_lines(node: TreeNode, indent: str) -> Iterator[str]:
    for child in node.children:
        slash = "/" if child.is_dir else ""
        yield f"{indent}{child.name}{slash}  ({human_size(child.size)})"
        yield from _tree_lines(child, indent + "  ")


def storage_readme(
    layout: Layout, manifest: dict[str, Any] | None, manifest_sha: str | None
) -> str:
    tree = storage_tree(layout.root, 3)
    tree.children = [c for c in tree.children if c.name != layout.state_dir.name]
    example = layout.model(assets.MODELS[0]).safetensors_dir
    return render(
        "storage_readme.md",
        header=_header("Storage", layout, manifest_sha),
        storage_version=STORAGE_VERSION,
        file_count=len(manifest["files"]) if manifest else 0,
        manifest_sha=manifest_sha or "none",
        tree=_lines([f"{layout.root.name}/", *_tree_lines(tree, "  ")]),
        root=layout.root,
        model_dir=layout.relative(example),
        sources=_sources_table(layout),
    )


def _checklist_for_reports(layout: Layout) -> Checklist:
    """The latest verification if the freshness store says it still describes the tree,
    else a fresh one."""
    store = Store(layout)
    saved = last_checklist(layout, store)
    manifest = load_manifest(layout)
    unchanged = (
        saved is not None
        and manifest is not None
        and compare_with_manifest(layout, manifest, store).ok
    )
    if saved is not None and unchanged:
        saved.steps = [s for s in saved.steps if s.group in ASSET_GROUPS]
        return saved
    return run_checklist(layout, through=LAST_ASSET_GROUP)


def generate_reports(layout: Layout, checklist: Checklist | None = None) -> list[Path]:
    """Write the three reports and the storage README; returns their paths."""
    if not layout.root.is_dir():
        raise WmtpError(
            "storage root does not exist", path=layout.root, hint="run `wmtp build` first"
        )
    checklist = checklist or _checklist_for_reports(layout)
    manifest = load_manifest(layout)
    sha = manifest_sha256(layout)
    documents = {
        layout.report(INVENTORY): inventory(layout, manifest, sha),
        layout.report(COMPLETION): completion_report(layout, checklist, sha),
        layout.report(MIGRATION): migration_notes(layout, checklist, sha),
        layout.readme: storage_readme(layout, manifest, sha),
    }
    for path, text in documents.items():
        write_text(path, text if text.endswith("\n") else text + "\n")
    return list(documents)
