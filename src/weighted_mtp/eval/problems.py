"""Evaluation problems read from the raw upstream records in the storage: which tasks a
split holds, the prompt each is generated from, and how a completion for each becomes a
sandbox job. Each dataset's benchmark module (`weighted_mtp.assets.benchmarks`) says how a
row becomes a problem and a prompt, which splits and test choices exist and which split a
row is in; its raw file is the benchmark's `raw_file` (or the split's file). Tasks come
from the raw rows, never from the prepared (length-filtered) training records, so a split
is the whole benchmark: MBPP's test split is 500 tasks, HumanEval 164.

A problem's tests are either function-style (`FunctionTests`: the sample's program is the
problem's prompt plus the completion, judged in the benchmark's namespace by a separate
process) or whole programs run on stdin/stdout cases (`StdioTests`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from weighted_mtp import assets
from weighted_mtp.assets.benchmark import (
    BASE_TESTS,
    PLUS_TESTS,
    Benchmark,
    FunctionTests,
    Problem,
    StdioTests,
    TestChoice,
)
from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import Rejected
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.sandbox.pool import Job
from weighted_mtp.limits import current_limits
from weighted_mtp.storage.jsonl import iter_lines, parse_json_line
from weighted_mtp.storage.layout import Layout
from weighted_mtp.storage.regular import open_regular


def problem_job(problem: Problem, tests: TestChoice, completion: str) -> Job:
    """The sandbox job that judges `completion` for `problem` by its `tests`."""
    judged = problem.tests[tests]
    if isinstance(judged, StdioTests):
        return Job(
            completion,
            tests=judged.cases,
            timeout=judged.time_limit,
            memory_bytes=judged.memory_bytes,
        )
    assert isinstance(judged, FunctionTests)
    return Job(
        problem.prompt + completion,
        test=judged.program,
        prelude=problem.prompt,
        entry_points=judged.entry_points,
        timeout=judged.time_limit,
    )


def raw_files(layout: Layout, dataset: str, split: str) -> list[Path]:
    """The raw upstream files holding the problems of `dataset` (per-split files: one split)."""
    paths = layout.dataset(dataset)
    path = paths.raw / f"{assets.benchmark(dataset).raw_file or split}.jsonl"
    if not path.is_file():
        raise WmtpError(
            f"raw {dataset} records not found",
            path=path,
            hint=f"run `wmtp data download {dataset}`",
        )
    return [path]


def canonical_task_id(dataset: str, task_id: Any) -> str:
    """A sample's task id as the benchmark names the task (`Benchmark.task_id`)."""
    return assets.benchmark(dataset).task_id(task_id)


def require_split(dataset: str, split: str) -> None:
    """`split` is one of the dataset's splits, or one usage error naming them."""
    _require_split(assets.benchmark(dataset), split)


def _require_split(benchmark: Benchmark, split: str) -> None:
    if split not in benchmark.splits:
        raise UsageError(
            f"{benchmark.name} has no split {split!r}",
            hint=f"its splits: {', '.join(benchmark.splits)}",
        )


def require_tests(dataset: str, tests: str) -> TestChoice:
    """`tests` as a choice the dataset has, or one usage error."""
    return _require_tests(assets.benchmark(dataset), tests)


def _require_tests(benchmark: Benchmark, tests: str) -> TestChoice:
    known = {BASE_TESTS: ""} | {c: w for b in assets.BENCHMARKS for c, w in b.extra_tests.items()}
    if tests not in known:
        raise UsageError(f"--tests {tests!r} is not one of {', '.join(known)}")
    if tests not in benchmark.test_choices:
        having = [b.name for b in assets.BENCHMARKS if tests in b.test_choices]
        raise UsageError(
            f"{benchmark.name} has no {known[tests]}; --tests {tests} is for {', '.join(having)}",
            hint="drop --tests",
        )
    return tests


@dataclass(frozen=True)
class BenchmarkChoice:
    """What an evaluation reads of a dataset, checked against the registry in one look-up:
    the split ("" chose the dataset's evaluation split), the tests, and where a completion
    stops."""

    dataset: str
    split: str
    tests: TestChoice
    stop_sequences: tuple[str, ...]


def choose_benchmark(dataset: str, split: str = "", tests: str = BASE_TESTS) -> BenchmarkChoice:
    """`dataset`'s split and tests, each checked; an unknown dataset, a split or tests it
    lacks is one usage error."""
    benchmark = assets.benchmark(dataset)  # an unknown dataset is a usage error
    split = split or benchmark.eval_split
    _require_split(benchmark, split)
    return BenchmarkChoice(
        dataset, split, _require_tests(benchmark, tests), benchmark.stop_sequences
    )


@dataclass(frozen=True)
class SplitProblems:
    """The tasks of one split: all their ids in file order, and the problems (with their
    prompts) of those selected, judged by the tests `tests`; `raw_sha256` is the SHA-256 of
    each raw file's bytes as they were read (by path)."""

    dataset: str
    split: str
    tests: TestChoice
    files: tuple[Path, ...]
    task_ids: tuple[str, ...]
    problems: dict[str, Problem]
    prompts: dict[str, PromptParts]
    raw_sha256: dict[str, str]

    def unattempted(self, attempted: Collection[str]) -> list[str]:
        """Tasks of the split outside `attempted`, in file order."""
        return [task_id for task_id in self.task_ids if task_id not in attempted]

    def job(self, task_id: str, completion: str) -> Job:
        """The sandbox job that judges `completion` for task `task_id`."""
        return problem_job(self.problems[task_id], self.tests, completion)

    def has_plus(self, task_id: str) -> bool:
        """Whether task `task_id` has plus tests (`PLUS_TESTS`)."""
        return PLUS_TESTS in self.problems[task_id].tests

    def plus_job(self, task_id: str, completion: str) -> Job:
        """The sandbox job that judges `completion` by task `task_id`'s plus tests."""
        return problem_job(self.problems[task_id], PLUS_TESTS, completion)


def load_split(
    layout: Layout,
    dataset: str,
    split: str,
    *,
    tests: TestChoice = BASE_TESTS,
    only: Collection[str] | None = None,
    limit: int | None = None,
) -> SplitProblems:
    """Every task of a split, and the problems of those selected: `only` these ids (CodeContests
    rows carry MBs of tests), or the first `limit`, or all. Each raw file is read once,
    parsed and hashed together. A row that does not parse is one error naming its file and
    line."""
    benchmark = assets.benchmark(dataset)
    _require_split(benchmark, split)
    files = raw_files(layout, dataset, split)
    digests = {str(path): hashlib.sha256() for path in files}
    task_ids: list[str] = []
    seen: set[str] = set()
    problems: dict[str, Problem] = {}
    prompts: dict[str, PromptParts] = {}
    for path in files:
        for line, row in _hashed_rows(path, digests[str(path)]):
            try:
                if benchmark.row_split(row, path, line, split) != split:
                    continue
                problem = benchmark.problem(row, path, line)
                if problem.task_id in seen:
                    raise WmtpError(
                        f"line {line}: task {problem.task_id!r} appears a second time",
                        path=path,
                        hint="deduplicate the raw file (`wmtp data download` it again)",
                    )
                seen.add(problem.task_id)
                task_ids.append(problem.task_id)
                wanted = (only is None or problem.task_id in only) and (
                    limit is None or len(problems) < limit
                )
                if wanted:
                    problems[problem.task_id] = problem
                    prompts[problem.task_id] = benchmark.prompt(row, path, line, tests)
            except Rejected as exc:
                raise WmtpError(f"line {line}: {exc.reason}", path=path) from None
            except (TypeError, ValueError, AttributeError) as exc:
                raise WmtpError(
                    f"line {line}: unexpected value ({type(exc).__name__}: {exc})", path=path
                ) from None
    raw_sha256 = {name: digest.hexdigest() for name, digest in digests.items()}
    return SplitProblems(
        dataset, split, tests, tuple(files), tuple(task_ids), problems, prompts, raw_sha256
    )


class _Hashing:
    """A binary stream whose bytes are fed to `digest` as they are read."""

    def __init__(self, handle: BinaryIO, digest: hashlib._Hash) -> None:
        self.handle, self.digest = handle, digest

    def read(self, size: int, /) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def _hashed_rows(path: Path, digest: hashlib._Hash) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line, object)` of each row of a raw JSONL file, read under the storage's limits,
    every byte of it fed to `digest`."""
    limits = current_limits()
    seen = False
    with open_regular(path) as handle:
        for line, raw in iter_lines(_Hashing(handle, digest), path, limits):
            yield line, parse_json_line(raw, path, line)
            seen = True
    if not seen:
        raise WmtpError(
            "file is empty: no JSON records", path=path, hint="download the dataset again"
        )
