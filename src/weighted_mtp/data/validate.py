"""`wmtp data validate`: processed datasets re-checked from their bytes.

Every record against `schema.json`, every token length recounted, every file's SHA-256
against the summary, splits task-disjoint with no identical prompt+response across them,
sample_ids unique, small sets within their limits. Per record only fixed-size hashes are
kept (sorted with numpy at the end), so memory stays small for millions of records.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp.checks import Report
from weighted_mtp.data.small import SMALL_LIMITS
from weighted_mtp.data.sources import iter_jsonl
from weighted_mtp.data.tokens import SPECIAL_TOKENS, Tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import read_json
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import DATASETS, META_MODEL, SPLITS, DatasetPaths, Layout
from weighted_mtp.storage.stamps import record_verified

MAX_REPORTED = 5
TOKEN_BATCH = 2048


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class _Scan:
    """What one pass over a split's records found."""

    errors: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)
    records: int = 0
    correct: int = 0
    incorrect: int = 0
    tasks: set[str] = field(default_factory=set)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(message)


def _schema_errors(validator, record: dict) -> list[str]:
    return [f"{'/'.join(str(p) for p in e.absolute_path) or 'record'}: {e.message}"[:200]
            for e in validator.iter_errors(record)]


def _scan_split(path: Path, validator, tokenizer: Tokenizer | None, max_length: int,
                sample_ids: array, contents: array, split_index: int) -> _Scan:
    scan = _Scan()
    pending: list[tuple[int, str, str]] = []

    def count_pending() -> None:
        if tokenizer is None or not pending:
            return
        texts = [text for _line, prompt, response in pending for text in (prompt, response)]
        counts = tokenizer.counts(texts)
        for i, (line, _prompt, _response) in enumerate(pending):
            total = counts[2 * i] + counts[2 * i + 1] + SPECIAL_TOKENS
            if total > max_length and len(scan.too_long) < MAX_REPORTED:
                scan.too_long.append(f"{path.name} line {line}: {total} tokens")
        pending.clear()

    try:
        for line, record in iter_jsonl(path):
            scan.records += 1
            problems = _schema_errors(validator, record)
            if problems:
                scan.error(f"{path.name} line {line}: {problems[0]}")
                continue
            metadata = record["metadata"]
            scan.tasks.add(metadata["task_id"])
            scan.correct += metadata["is_correct"]
            scan.incorrect += not metadata["is_correct"]
            sample_ids.append(_hash64(metadata["sample_id"]))
            contents.append((_hash64(f"{record['prompt']}\0{record['response']}") & ~3)
                            | split_index)
            pending.append((line, record["prompt"], record["response"]))
            if len(pending) >= TOKEN_BATCH:
                count_pending()
    except WmtpError as exc:
        scan.error(exc.line())
    count_pending()
    return scan


def _duplicates(values: array) -> int:
    import numpy as np

    keys = np.sort(np.frombuffer(values, dtype=np.uint64))
    return int(np.count_nonzero(keys[1:] == keys[:-1]))


def _cross_split_duplicates(contents: array) -> int:
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
    candidates = [Path(summary.get("tokenizer", {}).get("path", "")),
                  layout.model(META_MODEL).tokenizer_model]
    for path in candidates:
        if path.is_file() and sha256_file(path) == wanted:
            return Tokenizer(path), str(path)
    return None, "the tokenizer prepare used (sha256 " + str(wanted)[:12] + "…) is not found"


def _check_files(report: Report, paths: DatasetPaths, summary: dict[str, Any]) -> None:
    recorded = summary.get("files", {})
    changed = [name for name, digest in recorded.items()
               if not (paths.processed / name).is_file()
               or sha256_file(paths.processed / name) != digest]
    unlisted = [p.name for p in paths.processed.glob("*.jsonl") if p.name not in recorded]
    report.add("checksums", not changed and not unlisted and bool(recorded),
               f"{len(recorded)} files match the summary" if not changed and not unlisted
               else f"changed or missing: {changed}; not in the summary: {unlisted}",
               files=changed + unlisted)


def _load_validator(report: Report, paths: DatasetPaths):
    import jsonschema

    try:
        schema = read_json(paths.schema, "record schema")
        jsonschema.Draft202012Validator.check_schema(schema)
    except (WmtpError, jsonschema.SchemaError) as exc:
        report.add("schema.json", False, str(getattr(exc, "message", exc)),
                   files=[paths.schema.name])
        return None
    report.add("schema.json", True, "a valid JSON Schema (draft 2020-12)")
    return jsonschema.Draft202012Validator(schema)


def _check_splits(report: Report, paths: DatasetPaths, summary: dict, validator,
                  tokenizer: Tokenizer | None) -> dict[str, _Scan]:
    max_length = int(summary.get("max_length", 0))
    sample_ids, contents = array("Q"), array("Q")
    scans = {}
    for index, split in enumerate(SPLITS):
        if paths.split(split).is_file():
            scans[split] = _scan_split(paths.split(split), validator, tokenizer, max_length,
                                       sample_ids, contents, index)
    errors = [e for scan in scans.values() for e in scan.errors]
    report.add("records match schema.json", bool(scans) and not errors,
               "; ".join(errors) or f"{sum(s.records for s in scans.values())} records")
    if tokenizer is not None:
        too_long = [e for scan in scans.values() for e in scan.too_long]
        report.add(f"token lengths <= {max_length}", not too_long, "; ".join(too_long))
    mismatched = [s for s, scan in scans.items()
                  if summary.get("splits", {}).get(s, {}).get("records") != scan.records]
    report.add("record counts match the summary", not mismatched,
               f"differ in: {', '.join(mismatched)}" if mismatched else "")
    shared = [(a, b, len(scans[a].tasks & scans[b].tasks)) for i, a in enumerate(scans)
              for b in list(scans)[i + 1:] if scans[a].tasks & scans[b].tasks]
    report.add("splits are task-disjoint", not shared,
               "; ".join(f"{n} task_ids in both {a} and {b}" for a, b, n in shared))
    duplicated = _duplicates(sample_ids)
    report.add("sample_ids are unique", not duplicated,
               f"{duplicated} duplicated sample_ids" if duplicated else "")
    crossing = _cross_split_duplicates(contents)
    report.add("no identical prompt+response across splits", not crossing,
               f"{crossing} records repeated in another split" if crossing else "")
    return scans


def _check_small(report: Report, layout: Layout, name: str, validator,
                 scans: dict[str, _Scan]) -> None:
    small = layout.small(name)
    present = [s for s in SPLITS if small.split(s).is_file()]
    if not present:
        return
    problems, tasks = [], {}
    for split in present:
        path = small.split(split)
        scan = _scan_split(path, validator, None, 0, array("Q"), array("Q"), 0)
        problems += scan.errors
        tasks[split] = scan.tasks
        if scan.records > SMALL_LIMITS[split]:
            problems.append(f"{path.name}: {scan.records} records > {SMALL_LIMITS[split]}")
        if split not in scans or not scan.tasks <= scans[split].tasks:
            problems.append(f"{path.name}: records not from processed/{split}.jsonl")
        full = scans.get(split)
        if full and full.correct and full.incorrect and not (scan.correct and scan.incorrect):
            problems.append(f"{path.name}: lacks correct or incorrect samples")
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            if tasks[a] & tasks[b]:
                problems.append(f"small {a} and {b} share task_ids")
    report.add("small sets", not problems, "; ".join(problems[:MAX_REPORTED]) or
               ", ".join(f"{s}_small" for s in present))


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
    validator = _load_validator(report, paths)
    if validator is None:
        return report
    tokenizer, detail = _tokenizer_for(layout, summary)
    report.add("tokenizer", tokenizer is not None, detail)
    scans = _check_splits(report, paths, summary, validator, tokenizer)
    _check_small(report, layout, name, validator, scans)
    if report.ok:
        record_verified(layout, paths.root)
    return report


def prepared_datasets(layout: Layout) -> list[str]:
    """Datasets of the root that have been prepared (have a summary)."""
    return [name for name in DATASETS if layout.dataset(name).summaries()]
