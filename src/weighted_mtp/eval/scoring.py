"""Score a samples file in the HumanEval harness format: execute, write results, pass@k.

Input: one JSON object per line with `task_id` and `completion` (HumanEval: the function
body that continues the prompt; MBPP and CodeContests: a whole program). Every line is
checked before anything runs: a non-JSON line, a missing or non-string field, an unknown
task id or a repeated sample stops with one line naming the file and line. A repeated
sample is the same `(task_id, sample_id)` when lines carry a `sample_id` (or the harness's
`completion_id`), else a byte-identical line.

Output, next to the samples (atomically, like the harness names them):
`<samples>_results.jsonl` (each input object plus `passed`, `result`, `reason`; a row
whose text cannot be written as UTF-8, e.g. a lone surrogate, is written with JSON's
`\\u` escapes instead) and `<samples>_summary.json` (`ScoreSummary`, with the sandbox's
protections that were in force).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import progress
from weighted_mtp.clock import utc_now
from weighted_mtp.data.sources import parse_json_line
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.passk import mean_pass_at_k
from weighted_mtp.eval.sandbox import RESULTS, Outcome, Sandbox, SandboxLimits
from weighted_mtp.eval.tasks import Problem, canonical_task_id, load_problems, raw_files
from weighted_mtp.storage.atomic import atomic_write, write_json
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import Layout

DEFAULT_KS = (1, 10, 100)
SAMPLE_ID_KEYS = ("sample_id", "completion_id")


@dataclass(frozen=True)
class Sample:
    line: int
    task_id: str
    completion: str
    record: dict[str, Any]


@dataclass
class ScoreSummary:
    dataset: str
    split: str
    samples: str
    samples_sha256: str
    raw_files: dict[str, str]
    n_samples: int
    n_tasks: int
    results: dict[str, int]
    pass_at_k: dict[str, float | None]
    wall_seconds: float
    samples_per_second: float
    workers: int
    limits: dict[str, Any]
    sandbox: dict[str, Any]  # which protections were in force (docs/evaluation-sandbox.md)
    scored_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def results_path(samples: Path) -> Path:
    return samples.with_name(samples.name + "_results.jsonl")


def summary_path(samples: Path) -> Path:
    return samples.with_name(samples.name + "_summary.json")


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        ks = ()
    if not ks or ks[0] < 1:
        raise UsageError(
            f"--k {text!r} is not a list of positive integers", hint="e.g. --k 1,10,100"
        )
    return ks


def _sample(obj: dict[str, Any], dataset: str, path: Path, line: int) -> Sample:
    for key in ("task_id", "completion"):
        if key not in obj:
            raise WmtpError(
                f"line {line}: missing field {key!r}",
                path=path,
                hint='each line must be {"task_id": ..., "completion": ...}',
            )
    if not isinstance(obj["completion"], str):
        raise WmtpError(f"line {line}: 'completion' is not a string", path=path)
    return Sample(line, canonical_task_id(dataset, obj["task_id"]), obj["completion"], obj)


def _identity(sample: Sample, raw: bytes) -> tuple[Any, ...]:
    for key in SAMPLE_ID_KEYS:
        if key in sample.record:
            return (sample.task_id, key, json.dumps(sample.record[key]))
    return (raw.strip(),)


def read_samples(path: Path, dataset: str) -> list[Sample]:
    """Every sample of the file, or an error naming the first bad line."""
    if not path.is_file():
        raise WmtpError("samples file not found", path=path)
    samples: list[Sample] = []
    seen: dict[tuple[Any, ...], int] = {}
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            sample = _sample(parse_json_line(raw, path, line), dataset, path, line)
            identity = _identity(sample, raw)
            if identity in seen:
                raise WmtpError(
                    f"line {line}: duplicate of line {seen[identity]}",
                    path=path,
                    hint="give each sample of a task its own sample_id, or drop the copy",
                )
            seen[identity] = line
            samples.append(sample)
    if not samples:
        raise WmtpError("samples file has no samples", path=path)
    return samples


def require_known(
    samples: list[Sample], problems: dict[str, Problem], path: Path, split: str
) -> None:
    for sample in samples:
        if sample.task_id not in problems:
            raise WmtpError(
                f"line {sample.line}: unknown task id {sample.task_id!r}",
                path=path,
                hint=f"not a task of this dataset's {split} records",
            )


def pass_at_ks(
    samples: list[Sample], outcomes: list[Outcome], ks: tuple[int, ...]
) -> dict[str, float | None]:
    """pass@k per k over the tasks that have samples; None where a task has fewer than k."""
    per_task: dict[str, list[bool]] = defaultdict(list)
    for sample, outcome in zip(samples, outcomes, strict=True):
        per_task[sample.task_id].append(outcome.passed)
    counts = [(len(passed), sum(passed)) for passed in per_task.values()]
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}


def result_line(row: dict[str, Any]) -> bytes:
    """One results row as a UTF-8 JSON line; rows holding text UTF-8 cannot encode (lone
    surrogates, which JSON input may carry) keep it as `\\u` escapes."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def write_results(path: Path, samples: list[Sample], outcomes: list[Outcome]) -> None:
    with atomic_write(results_path(path), "wb") as handle:
        for sample, outcome in zip(samples, outcomes, strict=True):
            row = {
                **sample.record,
                "passed": outcome.passed,
                "result": outcome.result,
                "reason": outcome.reason,
            }
            handle.write(result_line(row))


def execute(
    samples: list[Sample], problems: dict[str, Problem], workers: int, limits: SandboxLimits
) -> tuple[list[Outcome], dict[str, Any]]:
    """Every sample's outcome, and the sandbox's protections that were in force."""
    jobs = [problems[s.task_id].job(s.completion) for s in samples]
    with (
        progress.task("executing samples", len(jobs), "samples") as advance,
        Sandbox(workers, limits) as box,
    ):
        return box.run_all(jobs, advance), box.protections


def score_samples(
    layout: Layout,
    dataset: str,
    samples_path: Path,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    split: str = "test",
    workers: int = 2,
    limits: SandboxLimits | None = None,
) -> ScoreSummary:
    """Check, execute and score a samples file; writes the results and summary beside it."""
    limits = limits or SandboxLimits()
    samples = read_samples(samples_path, dataset)
    problems = load_problems(layout, dataset, split, only={s.task_id for s in samples})
    require_known(samples, problems, samples_path, split)
    start = time.perf_counter()
    outcomes, protections = execute(samples, problems, workers, limits)
    wall = time.perf_counter() - start
    write_results(samples_path, samples, outcomes)
    counts = Counter(o.result for o in outcomes)
    summary = ScoreSummary(
        dataset=dataset,
        split=split,
        samples=str(samples_path),
        samples_sha256=sha256_file(samples_path),
        raw_files={str(p): sha256_file(p) for p in raw_files(layout, dataset, split)},
        n_samples=len(samples),
        n_tasks=len({s.task_id for s in samples}),
        results={result: counts.get(result, 0) for result in RESULTS},
        pass_at_k=pass_at_ks(samples, outcomes, ks),
        wall_seconds=round(wall, 3),
        samples_per_second=round(len(samples) / wall, 2) if wall > 0 else 0.0,
        workers=workers,
        limits=asdict(limits),
        sandbox=protections,
    )
    write_json(summary_path(samples_path), summary.to_dict())
    return summary
