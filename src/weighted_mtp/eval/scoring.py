"""Score a samples file in the HumanEval harness format: execute, write results, pass@k.

Input: one JSON object per line with `task_id` and `completion` (HumanEval: the function
body that continues the prompt; MBPP and CodeContests: a whole program). The file must be a
regular file; it is read line by line under the storage's line limit
(`weighted_mtp.limits`), never whole. Every line is checked before anything runs: a
non-JSON line, a missing or non-string field, an unknown task id or a repeated sample stops
with one line naming the file and line. A repeated sample is the same `(task_id,
sample_id)` when lines carry a `sample_id` (or the harness's `completion_id`), else a
byte-identical line. Like the harness's `evaluate_functional_correctness`, a file that
leaves tasks of the split unattempted is refused unless `partial` (then the summary lists
them and pass@k is over the attempted tasks).

The file is read again to build the jobs, `JOBS_AT_ONCE` at a time, and to write the
results, so memory holds a batch of completions whatever the file's size; its SHA-256 before
and after must agree. `wmtp eval run` scores the samples it generated as they are in memory
(`score_generated`): it reads no samples file back.

A benchmark with plus tests (EvalPlus's HumanEval+ and MBPP+) is scored as EvalPlus scores
it: every sample by the base tests, and each sample that passed them by the plus tests too
(a sample passes "plus" when it passes both; one that failed the base tests keeps that
verdict for plus); pass@k is reported for both.

Output, next to the samples (atomically, like the harness names them; both paths are
checked before any sample runs): `<samples>_results.jsonl` (each input object plus
`passed`, `result`, `reason`, and with plus tests `plus_passed`, `plus_result`,
`plus_reason`; a row whose text cannot be written as UTF-8, e.g. a lone
surrogate, is written with JSON's `\\u` escapes instead) and `<samples>_summary.json`
(`ScoreSummary`, with the sandbox's protections that were in force).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import progress
from weighted_mtp.assets.benchmark import TestChoice
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import defaults
from weighted_mtp.eval.passk import mean_pass_at_k
from weighted_mtp.eval.problems import (
    SplitProblems,
    canonical_task_id,
    load_split,
    require_split,
)
from weighted_mtp.eval.result_files import TaskCount
from weighted_mtp.eval.sandbox.pool import (
    RESULTS,
    Job,
    Outcome,
    Sandbox,
    SandboxLimits,
    unconfined_warning,
)
from weighted_mtp.limits import current_limits
from weighted_mtp.storage.atomic import atomic_write, write_json
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.jsonl import iter_lines, parse_json_line
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.regular import open_regular, special_kind

DEFAULT_KS = (1, 10, 100)
SAMPLE_ID_KEYS = ("sample_id", "completion_id")
# Jobs built and handed to the sandbox at a time: bounds the completions held in memory;
# a batch waits for its slowest sample, so it holds many times the workers.
JOBS_AT_ONCE = 1024


@dataclass(frozen=True)
class Sample:
    """One sample: its line in the samples file (1-based), its task as the benchmark names
    it, its completion, and the line's JSON object (written again with its verdict)."""

    line: int
    task_id: str
    completion: str
    row: dict[str, Any]


@dataclass
class ScoreSummary:
    dataset: str
    split: str
    tests: str
    samples: str
    samples_sha256: str
    raw_files: dict[str, str]
    n_samples: int
    n_tasks: int  # tasks attempted (scored)
    n_tasks_in_split: int
    partial: bool
    unattempted: list[str]  # tasks of the split without samples (only when partial)
    tasks: dict[str, TaskCount]  # per task attempted: samples and passed
    results: dict[str, int]
    pass_at_k: dict[str, float | None]
    plus_results: dict[str, int] | None  # the plus verdicts (None: no plus tests)
    plus_pass_at_k: dict[str, float | None] | None
    wall_seconds: float
    samples_per_second: float
    workers: int
    limits: dict[str, Any]
    sandbox: dict[str, Any]  # which protections were in force (docs/evaluation-sandbox.md)
    scored_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        """Its fields; first a `warning` when the samples ran unconfined (--no-isolation)."""
        warning = unconfined_warning(self.sandbox)
        return {**({"warning": warning} if warning else {}), **asdict(self)}


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


def require_writable(path: Path, what: str) -> None:
    """`path` can be written atomically: it is absent or a regular file, and its nearest
    existing folder is a folder this process may write in. Else one error, before any work."""
    try:
        kind = special_kind(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file: see below
        kind = None
    if kind is not None:
        raise WmtpError(
            f"{what} is {kind}, not a file it can be written to",
            path=path,
            hint="move it away, or write elsewhere",
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise WmtpError(
            f"cannot write the {what} in {folder}",
            path=path,
            hint="choose a folder you can write in",
        )


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


def _identity(sample: Sample, raw: bytes) -> bytes:
    """A digest naming the sample: its task and sample id, else the line's bytes."""
    for key in SAMPLE_ID_KEYS:
        if key in sample.row:
            named = json.dumps([sample.task_id, key, sample.row[key]]).encode()
            return hashlib.blake2b(b"id\0" + named, digest_size=16).digest()
    return hashlib.blake2b(b"line\0" + raw.strip(), digest_size=16).digest()


def iter_samples(path: Path, dataset: str) -> Iterator[tuple[Sample, bytes]]:
    """(sample, its line) for each non-blank line, read under the storage's line limit from
    a regular file; a bad line is one error naming it."""
    limits = current_limits()
    with open_regular(path, "samples file") as handle:
        for line, raw in iter_lines(handle, path, limits):
            obj = parse_json_line(raw, path, line)
            yield _sample(obj, dataset, path, line), raw


@dataclass(frozen=True)
class CheckedSamples:
    task_ids: list[str]  # each sample's task, in the order of the file
    first_lines: dict[str, int]  # each task's first line, by task id in order


def check_samples(path: Path, dataset: str) -> CheckedSamples:
    """Every line checked (see the module docstring). Only digests are kept, so memory does
    not grow with the completions' text."""
    seen: dict[bytes, int] = {}
    task_ids: list[str] = []
    first_lines: dict[str, int] = {}
    for sample, raw in iter_samples(path, dataset):
        identity = _identity(sample, raw)
        if identity in seen:
            raise WmtpError(
                f"line {sample.line}: duplicate of line {seen[identity]}",
                path=path,
                hint="give each sample of a task its own sample_id, or drop the copy",
            )
        seen[identity] = sample.line
        task_ids.append(sample.task_id)
        first_lines.setdefault(sample.task_id, sample.line)
    if not task_ids:
        raise WmtpError("samples file has no samples", path=path)
    return CheckedSamples(task_ids, first_lines)


def require_known(first_lines: dict[str, int], benchmark: SplitProblems, path: Path) -> None:
    known = set(benchmark.task_ids)
    for task_id, line in first_lines.items():
        if task_id not in known:
            raise WmtpError(
                f"line {line}: unknown task id {task_id!r}",
                path=path,
                hint=f"not a task of {benchmark.dataset}'s {benchmark.split} split",
            )


def require_complete(attempted: dict[str, int], benchmark: SplitProblems, path: Path) -> None:
    """Every task of the split has a sample, or one error naming how many have none."""
    missing = benchmark.unattempted(attempted)
    if missing:
        raise WmtpError(
            f"the samples cover {len(attempted)} of the {len(benchmark.task_ids)} tasks of "
            f"{benchmark.dataset}'s {benchmark.split} split; {len(missing)} unattempted "
            f"(first: {missing[0]})",
            path=path,
            hint="generate samples for every task, or score only these with --partial",
        )


def per_task(
    task_ids: list[str], outcomes: list[Outcome], plus: list[Outcome] | None = None
) -> dict[str, TaskCount]:
    """Samples and passes of each task (with `plus`, passes of the plus tests too), in the
    order the tasks first appear."""
    samples: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    plus_passed: Counter[str] = Counter()
    for index, (task_id, outcome) in enumerate(zip(task_ids, outcomes, strict=True)):
        samples[task_id] += 1
        passed[task_id] += outcome.passed
        if plus is not None:
            plus_passed[task_id] += plus[index].passed
    return {
        task_id: TaskCount(
            samples[task_id], passed[task_id], plus_passed[task_id] if plus is not None else None
        )
        for task_id in samples
    }


def pass_at_ks(
    tasks: dict[str, TaskCount], ks: tuple[int, ...], *, plus: bool = False
) -> dict[str, float | None]:
    """pass@k per k over the tasks that have samples (`plus`: by the plus verdicts); None
    where a task has fewer than k."""
    counts = [
        (task.samples, (task.plus_passed or 0) if plus else task.passed) for task in tasks.values()
    ]
    return {f"pass@{k}": mean_pass_at_k(counts, k) for k in ks}


def result_line(row: dict[str, Any]) -> bytes:
    """One results row as a UTF-8 JSON line; rows holding text UTF-8 cannot encode (lone
    surrogates, which JSON input may carry) keep it as `\\u` escapes."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def write_results(
    path: Path,
    samples: Iterable[Sample],
    outcomes: list[Outcome],
    sha256: str | None = None,
    plus: list[Outcome] | None = None,
) -> None:
    """Each sample's object again, with its verdict (and its plus verdict), beside the
    samples file `path`. With `sha256`, `samples` are streamed from that file, which must
    still be the bytes that were scored."""
    with atomic_write(results_path(path), "wb") as handle:
        intact = True
        try:
            for index, (sample, outcome) in enumerate(zip(samples, outcomes, strict=True)):
                row = {
                    **sample.row,
                    "passed": outcome.passed,
                    "result": outcome.result,
                    "reason": outcome.reason,
                }
                if plus is not None:
                    row |= {
                        "plus_passed": plus[index].passed,
                        "plus_result": plus[index].result,
                        "plus_reason": plus[index].reason,
                    }
                handle.write(result_line(row))
        except ValueError:  # zip: another number of lines than was scored
            intact = False
        if not intact or (sha256 is not None and sha256_file(path) != sha256):
            raise WmtpError(
                "the samples file changed while it was scored",
                path=path,
                hint="score it again once nothing writes to it",
            )


def jobs_of(samples: Iterable[Sample], split: SplitProblems) -> Iterator[Job]:
    """The sandbox job of every sample, made as they are needed."""
    for sample in samples:
        yield split.job(sample.task_id, sample.completion)


def plus_jobs_of(
    samples: Iterable[Sample], split: SplitProblems, base: list[Outcome]
) -> Iterator[Job]:
    """The plus job of every sample that passed the base tests and has plus tests."""
    for sample, outcome in zip(samples, base, strict=True):
        if outcome.passed and split.has_plus(sample.task_id):
            yield split.plus_job(sample.task_id, sample.completion)


def plus_outcomes(
    task_ids: list[str],
    samples: Iterable[Sample],
    split: SplitProblems,
    base: list[Outcome],
    run: Callable[[Iterator[Job], int], list[Outcome]],
) -> list[Outcome] | None:
    """Each sample's plus verdict (None: the benchmark has no plus tests): what `run` gives
    for its plus job where it passed the base tests, else its base verdict."""
    if not any(split.has_plus(task_id) for task_id in split.problems):
        return None
    wanted = [
        outcome.passed and split.has_plus(task_id)
        for task_id, outcome in zip(task_ids, base, strict=True)
    ]
    judged = iter(run(plus_jobs_of(samples, split, base), sum(wanted)))
    return [next(judged) if want else outcome for want, outcome in zip(wanted, base, strict=True)]


def samples_of(path: Path, dataset: str) -> Iterator[Sample]:
    """The samples of a samples file, read again as they are needed."""
    return (sample for sample, _raw in iter_samples(path, dataset))


def run_jobs(box: Sandbox, jobs: Iterator[Job], total: int, what: str) -> list[Outcome]:
    """Outcomes in the order of `jobs`, `JOBS_AT_ONCE` jobs taken from the iterator at a
    time (memory holds those, not the whole file's completions)."""
    outcomes: list[Outcome] = []
    with progress.task(what, total, "samples") as advance:
        while chunk := list(itertools.islice(jobs, JOBS_AT_ONCE)):
            outcomes += box.run_all(chunk, advance)
    return outcomes


def execute(
    samples: Callable[[], Iterable[Sample]],
    task_ids: list[str],
    split: SplitProblems,
    workers: int,
    limits: SandboxLimits,
) -> tuple[list[Outcome], list[Outcome] | None, dict[str, Any]]:
    """Every sample's outcome, its plus outcome (`plus_outcomes`) and the sandbox's
    protections that were in force, from one sandbox."""
    with Sandbox(workers, limits) as box:
        outcomes = run_jobs(box, jobs_of(samples(), split), len(task_ids), "executing samples")
        plus = plus_outcomes(
            task_ids,
            samples(),
            split,
            outcomes,
            lambda jobs, total: run_jobs(box, jobs, total, "executing the plus tests"),
        )
        return outcomes, plus, box.protections


def score_samples(
    layout: Layout,
    dataset: str,
    samples_path: Path,
    *,
    ks: tuple[int, ...] = DEFAULT_KS,
    split: str = "test",
    tests: TestChoice = "base",
    workers: int = defaults.SANDBOX_WORKERS,
    limits: SandboxLimits | None = None,
    partial: bool = False,
) -> ScoreSummary:
    """Check, execute and score a samples file; writes the results and summary beside it.
    A file that leaves tasks of the split unattempted is refused unless `partial`."""
    require_split(dataset, split)
    require_outputs(samples_path)
    sha256 = sha256_file(samples_path) if samples_path.is_file() else ""
    checked = check_samples(samples_path, dataset)
    attempted = checked.first_lines
    benchmark = load_split(layout, dataset, split, tests=tests, only=attempted)
    require_known(attempted, benchmark, samples_path)
    if not partial:
        require_complete(attempted, benchmark, samples_path)
    return _score(
        benchmark,
        checked.task_ids,
        lambda: samples_of(samples_path, dataset),
        SamplesFile(samples_path, sha256, benchmark.raw_sha256),
        ScoreOptions(ks, workers, limits or SandboxLimits(), partial),
        reread=True,
    )


def require_outputs(samples_path: Path) -> None:
    """The results and summary beside `samples_path` can be written, before anything runs."""
    require_writable(results_path(samples_path), "results file")
    require_writable(summary_path(samples_path), "summary file")


@dataclass(frozen=True)
class SamplesFile:
    """Where the samples are (the results and summary are written beside it), its SHA-256
    and the SHA-256 of the benchmark's raw files they are scored against."""

    path: Path
    sha256: str
    raw_files: dict[str, str]


@dataclass(frozen=True)
class ScoreOptions:
    ks: tuple[int, ...] = DEFAULT_KS
    workers: int = defaults.SANDBOX_WORKERS
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    partial: bool = False


def score_generated(
    benchmark: SplitProblems, samples: list[Sample], written: SamplesFile, options: ScoreOptions
) -> ScoreSummary:
    """Score samples held in memory, of the tasks of `benchmark` (loaded with their
    problems), that are also written in `written.path`: nothing is read back from it. The
    results and summary are written beside it, as `score_samples` writes them."""
    require_outputs(written.path)
    task_ids = [sample.task_id for sample in samples]
    require_known(dict.fromkeys(task_ids, 0), benchmark, written.path)
    return _score(benchmark, task_ids, lambda: samples, written, options, reread=False)


def _score(
    benchmark: SplitProblems,
    task_ids: list[str],
    samples: Callable[[], Iterable[Sample]],
    written: SamplesFile,
    options: ScoreOptions,
    *,
    reread: bool,
) -> ScoreSummary:
    """Execute every sample (`samples()` gives them, once for the jobs and once for the
    results), write the results and the summary."""
    start = time.perf_counter()
    outcomes, plus, protections = execute(
        samples, task_ids, benchmark, options.workers, options.limits
    )
    wall = time.perf_counter() - start
    write_results(written.path, samples(), outcomes, written.sha256 if reread else None, plus)
    tasks = per_task(task_ids, outcomes, plus)
    counts = Counter(o.result for o in outcomes)
    plus_counts = Counter(o.result for o in plus or [])
    summary = ScoreSummary(
        dataset=benchmark.dataset,
        split=benchmark.split,
        tests=benchmark.tests,
        samples=str(written.path),
        samples_sha256=written.sha256,
        raw_files=written.raw_files,
        n_samples=len(outcomes),
        n_tasks=len(tasks),
        n_tasks_in_split=len(benchmark.task_ids),
        partial=options.partial,
        unattempted=benchmark.unattempted(tasks),
        tasks=tasks,
        results={result: counts.get(result, 0) for result in RESULTS},
        pass_at_k=pass_at_ks(tasks, options.ks),
        plus_results=None if plus is None else {r: plus_counts.get(r, 0) for r in RESULTS},
        plus_pass_at_k=None if plus is None else pass_at_ks(tasks, options.ks, plus=True),
        wall_seconds=round(wall, 3),
        samples_per_second=round(len(outcomes) / wall, 2) if wall > 0 else 0.0,
        workers=options.workers,
        limits=asdict(options.limits),
        sandbox=protections,
    )
    write_json(summary_path(written.path), summary.to_dict())
    return summary
