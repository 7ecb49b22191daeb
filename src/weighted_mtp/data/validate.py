"""`wmtp data validate`: processed datasets re-checked from their bytes.

Every record against `schema.json`, every token length recounted, every file's SHA-256
against the summary, splits task-disjoint with no identical prompt+response across them,
sample_ids unique, small sets within their limits. Per record only fixed-size hashes are
kept (sorted with numpy at the end), so memory stays small for millions of records.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp import progress
from weighted_mtp.checks import Report
from weighted_mtp.data.small import SMALL_LIMITS
from weighted_mtp.data.template import hollow_sections
from weighted_mtp.data.tokens import SPECIAL_TOKENS, Tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.limits import current_limits
from weighted_mtp.storage import freshness
from weighted_mtp.storage.atomic import read_json
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.jsonl import iter_jsonl_range, line_chunks
from weighted_mtp.storage.layout import DATASETS, META_MODEL, SPLITS, DatasetPaths, Layout

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

MAX_REPORTED = 5
TOKEN_BATCH = 2048
CHUNK_BYTES = 64 << 20  # one worker job; files smaller than this are scanned in-process
JsonSchema = dict[str, Any] | bool  # what a JSON Schema is: an object or a boolean


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class _Scan:
    """What one pass over (part of) a split's records found."""

    errors: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)
    records: int = 0
    correct: int = 0
    incorrect: int = 0
    tasks: set[str] = field(default_factory=set)
    sample_ids: array[int] = field(default_factory=lambda: array("Q"))
    contents: array[int] = field(default_factory=lambda: array("Q"))

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(message)

    def merge(self, other: _Scan) -> None:
        self.errors += other.errors[: MAX_REPORTED - len(self.errors)]
        self.too_long += other.too_long[: MAX_REPORTED - len(self.too_long)]
        self.records += other.records
        self.correct += other.correct
        self.incorrect += other.incorrect
        self.tasks |= other.tasks
        self.sample_ids += other.sample_ids
        self.contents += other.contents


@dataclass(frozen=True)
class _Job:
    """One worker's share of a split file: bytes [start, end), starting at `first_line`."""

    path: Path
    start: int
    end: int
    first_line: int
    schema: str  # JSON text, so jobs pickle small and workers cache by it
    tokenizer: str | None
    max_length: int
    split_index: int


@functools.lru_cache(maxsize=4)
def _tools(schema: str, tokenizer: str | None) -> tuple[Draft202012Validator, Tokenizer | None]:
    import jsonschema

    return (
        jsonschema.Draft202012Validator(json.loads(schema)),
        Tokenizer(tokenizer, threads=1) if tokenizer else None,
    )


def _schema_error(validator: Draft202012Validator, record: dict[str, Any]) -> str | None:
    error = next(iter(validator.iter_errors(record)), None)
    if error is None:
        return None
    return f"{'/'.join(str(p) for p in error.absolute_path) or 'record'}: {error.message}"[:200]


def _count_lengths(
    scan: _Scan, job: _Job, tokenizer: Tokenizer | None, pending: list[tuple[int, str, str]]
) -> None:
    """Recount BOS + prompt + response + EOS; a task's prompt is encoded once per batch."""
    if tokenizer is None or not pending:
        return
    prompts = list(dict.fromkeys(prompt for _line, prompt, _response in pending))
    prompt_counts = dict(zip(prompts, tokenizer.counts(prompts), strict=True))
    response_counts = tokenizer.counts([response for _line, _prompt, response in pending])
    for (line, prompt, _response), tokens in zip(pending, response_counts, strict=True):
        total = prompt_counts[prompt] + tokens + SPECIAL_TOKENS
        if total > job.max_length and len(scan.too_long) < MAX_REPORTED:
            scan.too_long.append(f"{job.path.name} line {line}: {total} tokens")
    pending.clear()


def _content_error(record: dict[str, Any], max_chars: int) -> str | None:
    """A prompt or response too long to tokenize safely, or with a section that says
    nothing (empty, or a null turned into text)."""
    for key in ("prompt", "response"):
        if len(record[key]) > max_chars:
            return f"{key} is over {max_chars:,} characters (WMTP_MAX_TEXT_CHARS)"
    hollow = hollow_sections(record["prompt"], record["response"])
    if hollow:
        return f"empty or null-text section(s): {', '.join(hollow)}"
    return None


def _scan_job(job: _Job) -> _Scan:
    validator, tokenizer = _tools(job.schema, job.tokenizer)
    max_chars = current_limits().max_text_chars
    scan = _Scan()
    pending: list[tuple[int, str, str]] = []
    try:
        for line, record in iter_jsonl_range(job.path, job.start, job.end, job.first_line):
            scan.records += 1
            problem = _schema_error(validator, record) or _content_error(record, max_chars)
            if problem:
                scan.error(f"{job.path.name} line {line}: {problem}")
                continue
            metadata = record["metadata"]
            scan.tasks.add(metadata["task_id"])
            scan.correct += metadata["is_correct"]
            scan.incorrect += not metadata["is_correct"]
            scan.sample_ids.append(_hash64(metadata["sample_id"]))
            content = _hash64(f"{record['prompt']}\0{record['response']}")
            scan.contents.append((content & ~3) | job.split_index)
            pending.append((line, record["prompt"], record["response"]))
            if len(pending) >= TOKEN_BATCH:
                _count_lengths(scan, job, tokenizer, pending)
    except WmtpError as exc:
        scan.error(exc.line())
    _count_lengths(scan, job, tokenizer, pending)
    return scan


def _scan_files(
    files: dict[str, Path], schema: JsonSchema, tokenizer: Tokenizer | None, max_length: int
) -> dict[str, _Scan]:
    """Scan split files, in parallel over all cores when they are large."""
    schema_text = json.dumps(schema, sort_keys=True)
    tokenizer_path = str(tokenizer.path) if tokenizer else None
    jobs = [
        _Job(
            path,
            start,
            end,
            first,
            schema_text,
            tokenizer_path,
            max_length,
            SPLITS.index(split) if split in SPLITS else 0,
        )
        for split, path in files.items()
        for start, end, first in line_chunks(path, CHUNK_BYTES)
    ]
    large = sum(job.end - job.start for job in jobs) > CHUNK_BYTES
    workers = min(len(jobs), os.cpu_count() or 1) if large else 1
    with progress.task("validate records", len(jobs)) as advance:
        if workers <= 1:
            results = [_scan_job(job) for job in jobs]
            advance(len(jobs))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                results = []
                for result in pool.map(_scan_job, jobs):
                    results.append(result)
                    advance(1)
    scans = {split: _Scan() for split in files}
    for job, result in zip(jobs, results, strict=True):
        split = next(s for s, p in files.items() if p == job.path)
        scans[split].merge(result)
    for split, path in files.items():
        if scans[split].records == 0:
            scans[split].error(f"{path.name}: no records")
    return scans


def _duplicates(values: array[int]) -> int:
    import numpy as np

    keys = np.sort(np.frombuffer(values, dtype=np.uint64))
    return int(np.count_nonzero(keys[1:] == keys[:-1]))


def _all_in(values: array[int], pool: array[int]) -> bool:
    import numpy as np

    return bool(
        np.isin(np.frombuffer(values, dtype=np.uint64), np.frombuffer(pool, dtype=np.uint64)).all()
    )


def _cross_split_duplicates(contents: array[int]) -> int:
    """Identical prompt+response in two splits (the low 2 bits of each hash hold the split)."""
    import numpy as np

    keys = np.frombuffer(contents, dtype=np.uint64)
    content, split = keys & ~np.uint64(3), keys & np.uint64(3)
    order = np.lexsort((split, content))
    content, split = content[order], split[order]
    return int(np.count_nonzero((content[1:] == content[:-1]) & (split[1:] != split[:-1])))


def _tokenizer_for(layout: Layout, summary: dict[str, Any]) -> tuple[Tokenizer | None, str]:
    """The tokenizer prepare used (by SHA-256): its recorded path, else the Meta model's."""
    wanted = summary.get("tokenizer", {}).get("sha256")
    candidates = [
        Path(summary.get("tokenizer", {}).get("path", "")),
        layout.model(META_MODEL).tokenizer_model,
    ]
    for path in candidates:
        if path.is_file() and sha256_file(path) == wanted:
            return Tokenizer(path), str(path)
    return None, "the tokenizer prepare used (sha256 " + str(wanted)[:12] + "…) is not found"


def _check_files(report: Report, paths: DatasetPaths, summary: dict[str, Any]) -> None:
    recorded = summary.get("files", {})
    changed = [
        name
        for name, digest in recorded.items()
        if not (paths.processed / name).is_file() or sha256_file(paths.processed / name) != digest
    ]
    unlisted = [p.name for p in paths.processed.glob("*.jsonl") if p.name not in recorded]
    report.add(
        "checksums",
        not changed and not unlisted and bool(recorded),
        f"{len(recorded)} files match the summary"
        if not changed and not unlisted
        else f"changed or missing: {changed}; not in the summary: {unlisted}",
        files=changed + unlisted,
    )


def _load_schema(report: Report, paths: DatasetPaths) -> JsonSchema | None:
    import jsonschema

    try:
        schema: JsonSchema = read_json(paths.schema, "record schema")
        jsonschema.Draft202012Validator.check_schema(schema)  # an object or a boolean
    except (WmtpError, jsonschema.SchemaError) as exc:
        report.add(
            "schema.json", False, str(getattr(exc, "message", exc)), files=[paths.schema.name]
        )
        return None
    report.add("schema.json", True, "a valid JSON Schema (draft 2020-12)")
    return schema


def _check_splits(
    report: Report,
    paths: DatasetPaths,
    summary: dict[str, Any],
    schema: JsonSchema,
    tokenizer: Tokenizer | None,
) -> dict[str, _Scan]:
    max_length = int(summary.get("max_length", 0))
    files = {s: paths.split(s) for s in SPLITS if paths.split(s).is_file()}
    scans = _scan_files(files, schema, tokenizer, max_length)
    errors = [e for scan in scans.values() for e in scan.errors]
    report.add(
        "records match schema.json",
        bool(scans) and not errors,
        "; ".join(errors) or f"{sum(s.records for s in scans.values())} records",
    )
    if tokenizer is not None:
        too_long = [e for scan in scans.values() for e in scan.too_long]
        report.add(f"token lengths <= {max_length}", not too_long, "; ".join(too_long))
    mismatched = [
        s
        for s, scan in scans.items()
        if summary.get("splits", {}).get(s, {}).get("records") != scan.records
    ]
    report.add(
        "record counts match the summary",
        not mismatched,
        f"differ in: {', '.join(mismatched)}" if mismatched else "",
    )
    shared = [
        (a, b, len(scans[a].tasks & scans[b].tasks))
        for i, a in enumerate(scans)
        for b in list(scans)[i + 1 :]
        if scans[a].tasks & scans[b].tasks
    ]
    report.add(
        "splits are task-disjoint",
        not shared,
        "; ".join(f"{n} task_ids in both {a} and {b}" for a, b, n in shared),
    )
    duplicated = _duplicates(array("Q", b"".join(s.sample_ids.tobytes() for s in scans.values())))
    report.add(
        "sample_ids are unique",
        not duplicated,
        f"{duplicated} duplicated sample_ids" if duplicated else "",
    )
    crossing = _cross_split_duplicates(
        array("Q", b"".join(s.contents.tobytes() for s in scans.values()))
    )
    report.add(
        "no identical prompt+response across splits",
        not crossing,
        f"{crossing} records repeated in another split" if crossing else "",
    )
    return scans


def _check_small(
    report: Report, layout: Layout, name: str, schema: JsonSchema, scans: dict[str, _Scan]
) -> None:
    small = layout.small(name)
    present = [s for s in SPLITS if small.split(s).is_file()]
    if not present:
        return
    problems, tasks = [], {}
    small_scans = _scan_files({s: small.split(s) for s in present}, schema, None, 0)
    for split in present:
        path, scan = small.split(split), small_scans[split]
        problems += scan.errors
        tasks[split] = scan.tasks
        if scan.records > SMALL_LIMITS[split]:
            problems.append(f"{path.name}: {scan.records} records > {SMALL_LIMITS[split]}")
        if split not in scans or not _all_in(scan.contents, scans[split].contents):
            problems.append(f"{path.name}: records not in processed/{split}.jsonl")
        full = scans.get(split)
        if full and full.correct and full.incorrect and not (scan.correct and scan.incorrect):
            problems.append(f"{path.name}: lacks correct or incorrect samples")
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            if tasks[a] & tasks[b]:
                problems.append(f"small {a} and {b} share task_ids")
    report.add(
        "small sets",
        not problems,
        "; ".join(problems[:MAX_REPORTED]) or ", ".join(f"{s}_small" for s in present),
    )


def validate_dataset(layout: Layout, name: str) -> Report:
    """All checks of one prepared dataset; records the verification stamp if all pass."""
    paths = layout.dataset(name)
    report = Report(f"dataset {name}")
    summaries = paths.summaries()
    if not summaries:
        report.add("summary", False, f"no stats/*_summary.json: run `wmtp data prepare {name}`")
        return report
    try:
        summary = read_json(summaries[-1], "dataset summary")
    except WmtpError as exc:
        report.add("summary", False, exc.line())
        return report
    report.add("summary", True, paths.stats.name + "/" + summaries[-1].name)
    _check_files(report, paths, summary)
    schema = _load_schema(report, paths)
    if schema is None:
        return report
    tokenizer, detail = _tokenizer_for(layout, summary)
    report.add("tokenizer", tokenizer is not None, detail)
    scans = _check_splits(report, paths, summary, schema, tokenizer)
    _check_small(report, layout, name, schema, scans)
    if report.ok:
        freshness.record_verified(layout, name)
    else:
        freshness.clear(layout, name)
    return report


def prepared_datasets(layout: Layout) -> list[str]:
    """Datasets of the root that have been prepared (have a summary)."""
    return [name for name in DATASETS if layout.dataset(name).summaries()]
