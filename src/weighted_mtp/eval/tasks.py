"""Evaluation benchmarks read from the raw upstream records in the storage: which tasks a
split holds, the prompt each is generated from, and how a completion for each becomes a
sandbox job. The dataset's row schema (`AssetSpec.dataset_format`) chooses how a row
becomes a problem and which splits exist; its raw file is the registry's `raw_file` (or the
split's file). Tasks come from the raw rows, never from the prepared (length-filtered)
training records, so a split is the whole benchmark: MBPP's test split is 500 tasks,
HumanEval 164.

- HumanEval (split: test): the completion continues the function `prompt`; the sample's
  program is `prompt + completion`, and its judge runs the prompt's own helpers, then
  `test + check(entry_point)` with `entry_point` the sample's: the harness's check program,
  with tests and sample in separate processes.
- MBPP (splits: prompt, train, validation, test, by task number as the benchmark defines
  them): the completion is a whole program; the judge runs `test_setup_code`, then the
  `test_list` asserts and, with `tests="all"`, the `challenge_test_list` asserts (left out
  by default, as in the MBPP paper's evaluation); the names the reference solution defines
  are taken from the sample even where they are built-ins (task 126 asks for a function
  named `sum`).
- CodeContests (splits: train, validation, test, one raw file each): the completion is a
  whole program run on the public, private and generated tests via stdin/stdout under the
  problem's time limit (memory: its limit plus headroom for the interpreter).

The prompt is the task's training prompt (`data.converters.evaluation_prompt`), whose
notes name the tests that run.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from weighted_mtp import assets
from weighted_mtp.assets import DatasetFormat
from weighted_mtp.data.converters import evaluation_prompt
from weighted_mtp.data.sources import Rejected, field, typed
from weighted_mtp.data.splits import MBPP_OFFICIAL_SPLITS, mbpp_official_split
from weighted_mtp.data.template import PromptParts
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.sandbox.judge import is_module_name
from weighted_mtp.eval.sandbox.pool import Job
from weighted_mtp.limits import current_limits
from weighted_mtp.storage.jsonl import iter_lines, parse_json_line
from weighted_mtp.storage.layout import SPLITS, Layout
from weighted_mtp.storage.regular import open_regular

CODECONTESTS_TEST_KEYS = ("public_tests", "private_tests", "generated_tests")
DEFAULT_TIME_LIMIT = 2.0  # seconds, for CodeContests problems that record none
INTERPRETER_HEADROOM = 512 << 20  # address space Python itself needs beyond a problem's limit
# Which tests judge a sample: the benchmark's standard ones, or with MBPP's challenge tests.
TestChoice = Literal["base", "all"]
TEST_CHOICES: tuple[TestChoice, ...] = get_args(TestChoice)
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # a task number as JSON would write it


@dataclass(frozen=True)
class Problem:
    dataset: str
    task_id: str
    prompt: str  # HumanEval: the code the completion continues; else ""
    program_suffix: str  # the tests, run by the judge after the completion (function-style)
    tests: tuple[tuple[str, str], ...] | None = None  # stdin/stdout datasets
    time_limit: float | None = None
    memory_bytes: int | None = None
    entry_points: tuple[str, ...] = ()  # names the judge takes from the sample
    # Tests reported beside the base ones (EvalPlus's `plus`), run only on samples that
    # passed the base tests, with their own time limit (None: the sandbox's default).
    plus_suffix: str | None = None
    plus_timeout: float | None = None

    def plus_job(self, completion: str) -> Job | None:
        """The job that judges `completion` by the plus tests (None: there are none)."""
        if self.plus_suffix is None:
            return None
        return Job(
            self.prompt + completion,
            test=self.plus_suffix,
            prelude=self.prompt,
            entry_points=self.entry_points,
            timeout=self.plus_timeout,
        )

    def job(self, completion: str) -> Job:
        if self.tests is not None:
            return Job(
                completion,
                tests=self.tests,
                timeout=self.time_limit,
                memory_bytes=self.memory_bytes,
            )
        return Job(
            self.prompt + completion,
            test=self.program_suffix,
            prelude=self.prompt,
            entry_points=self.entry_points,
        )


def raw_files(layout: Layout, dataset: str, split: str) -> list[Path]:
    """The raw upstream files holding the problems of `dataset` (CodeContests: one split)."""
    paths = layout.dataset(dataset)
    path = paths.raw / f"{assets.spec(dataset).raw_file or split}.jsonl"
    if not path.is_file():
        raise WmtpError(
            f"raw {dataset} records not found",
            path=path,
            hint=f"run `wmtp data download {dataset}`",
        )
    return [path]


def canonical_task_id(dataset: str, task_id: Any) -> str:
    """A sample's task id as the benchmark names the task. MBPP numbers tasks: the number
    (`11`, or its plain ASCII decimal text `"11"`) or the prepared name (`mbpp/11`);
    anything else (`"011"`, `"١"`, `"²"`, `true`) is compared as given and matches no task."""
    numbered = assets.spec(dataset).numbered_tasks
    decimal = type(task_id) is int or (isinstance(task_id, str) and _DECIMAL.fullmatch(task_id))
    if numbered and decimal:
        return f"{dataset}/{task_id}"
    return task_id if isinstance(task_id, str) else repr(task_id)


def _humaneval(
    dataset: str, row: dict[str, Any], path: Path, line: int, choice: TestChoice
) -> Problem:
    entry_point = field(row, "entry_point", path, line)
    return Problem(
        dataset,
        str(field(row, "task_id", path, line)),
        field(row, "prompt", path, line),
        field(row, "test", path, line) + "\n" + f"check({entry_point})\n",
        entry_points=(entry_point,),
    )


def _reference_and_test_names(reference: str, tests: str) -> tuple[ast.Module, set[str]] | None:
    """The reference solution's syntax tree and the names the tests use (None: either does
    not parse)."""
    try:
        program, test = ast.parse(reference), ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    return program, {node.id for node in ast.walk(test) if isinstance(node, ast.Name)}


def _defined_names(program: ast.Module) -> set[str]:
    """Names the program's module level binds other than by import: functions, classes
    and every assignment target (`a, b = ...`, `for x in ...`, `with ... as f`)."""
    defined: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)  # its body is its own scope
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in program.body:
        visit(statement)
    return defined


def names_taken_from_sample(reference: str, tests: str) -> tuple[str, ...]:
    """Top-level names the reference solution defines that the tests use and that are
    also built-ins or standard-library module names: the judge must take those from the
    sample (plain Python would, since program and tests share one namespace); every other
    built-in and module name stays the judge's own (`is_module_name`)."""
    parsed = _reference_and_test_names(reference, tests)
    if parsed is None:
        return ()
    program, used = parsed
    judges = {
        name
        for name in _defined_names(program) & used
        if hasattr(builtins, name) or is_module_name(name)
    }
    return tuple(sorted(judges))


def judge_imports(reference: str, tests: str) -> str:
    """The reference solution's top-level imports from the standard library of names the
    tests use without binding them (`from math import isclose`, `import heapq as hq`), as
    code for the judge to run before the tests: those names are then the judge's own
    objects, not whatever a sample bound to them. Plain Python would give the tests the
    program's import of the same module."""
    parsed = _reference_and_test_names(reference, tests)
    if parsed is None:
        return ""
    program, used = parsed
    wanted = used - _defined_names(program)
    lines = []
    for node in program.body:
        if isinstance(node, ast.Import):
            aliases = [
                a
                for a in node.names
                if is_module_name(a.name.partition(".")[0])
                and (a.asname or a.name.partition(".")[0]) in wanted
            ]
            if aliases:
                lines.append(ast.unparse(ast.Import(names=aliases)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            aliases = [a for a in node.names if a.name != "*" and (a.asname or a.name) in wanted]
            if aliases and is_module_name(node.module.partition(".")[0]):
                lines.append(ast.unparse(ast.ImportFrom(node.module, aliases, 0)))
    return "".join(line + "\n" for line in lines)


def _mbpp(dataset: str, row: dict[str, Any], path: Path, line: int, choice: TestChoice) -> Problem:
    setup = row.get("test_setup_code") or ""
    asserts = list(field(row, "test_list", path, line))
    if choice == "all":
        asserts += row.get("challenge_test_list") or []
    tests = f"{setup}\n" + "\n".join(asserts) + "\n"
    reference = str(row.get("code") or "")
    program = judge_imports(reference, tests) + tests
    return Problem(
        dataset,
        canonical_task_id(dataset, field(row, "task_id", path, line)),
        "",
        program,
        entry_points=names_taken_from_sample(reference, tests),
    )


def _time_limit(row: dict[str, Any]) -> float:
    limit = row.get("time_limit") or {}
    seconds = float(limit.get("seconds") or 0) + float(limit.get("nanos") or 0) / 1e9
    return seconds or DEFAULT_TIME_LIMIT


def _codecontests(
    dataset: str, row: dict[str, Any], path: Path, line: int, choice: TestChoice
) -> Problem:
    tests: list[tuple[str, str]] = []
    for key in CODECONTESTS_TEST_KEYS:
        group = row.get(key) or {}
        tests += zip(group.get("input") or [], group.get("output") or [], strict=True)
    memory = row.get("memory_limit_bytes") or 0
    return Problem(
        dataset,
        str(field(row, "name", path, line)),
        "",
        "",
        tuple(tests),
        _time_limit(row),
        memory + INTERPRETER_HEADROOM if memory else None,
    )


@dataclass(frozen=True)
class BenchmarkFormat:
    """How the rows of one upstream schema become problems, and which splits they form:
    `row_split(row, path, line, file_split)` is a row's split (None: in none of them)."""

    parse: Callable[[str, dict[str, Any], Path, int, TestChoice], Problem]
    splits: tuple[str, ...]
    row_split: Callable[[dict[str, Any], Path, int, str], str | None]
    challenge_tests: bool = False  # rows carry extra tests that `tests="all"` adds


def _mbpp_row_split(row: dict[str, Any], path: Path, line: int, _file: str) -> str | None:
    return mbpp_official_split(typed(row, "task_id", int, path, line))


FORMATS: dict[DatasetFormat, BenchmarkFormat] = {
    "openai-humaneval": BenchmarkFormat(_humaneval, ("test",), lambda *_: "test"),
    "google-mbpp": BenchmarkFormat(
        _mbpp, MBPP_OFFICIAL_SPLITS, _mbpp_row_split, challenge_tests=True
    ),
    "deepmind-code-contests": BenchmarkFormat(
        _codecontests, SPLITS, lambda _row, _path, _line, file_split: file_split
    ),
}


def benchmark_format(dataset: str) -> BenchmarkFormat:
    return FORMATS[assets.dataset_format(dataset)]


def require_split(dataset: str, split: str) -> None:
    """`split` is one of the dataset's splits, or one usage error naming them."""
    _require_split(dataset, benchmark_format(dataset), split)


def _require_split(dataset: str, fmt: BenchmarkFormat, split: str) -> None:
    if split not in fmt.splits:
        raise UsageError(
            f"{dataset} has no split {split!r}", hint=f"its splits: {', '.join(fmt.splits)}"
        )


def require_tests(dataset: str, tests: str) -> TestChoice:
    """`tests` as a choice the dataset has, or one usage error."""
    return _require_tests(dataset, benchmark_format(dataset), tests)


def _require_tests(dataset: str, fmt: BenchmarkFormat, tests: str) -> TestChoice:
    if tests not in TEST_CHOICES:
        raise UsageError(f"--tests {tests!r} is not one of {', '.join(TEST_CHOICES)}")
    if tests == "all" and not fmt.challenge_tests:
        having = [d for d in assets.DATASETS if benchmark_format(d).challenge_tests]
        raise UsageError(
            f"{dataset} has no challenge tests; --tests all is for {', '.join(having)}",
            hint="drop --tests",
        )
    return "all" if tests == "all" else "base"


@dataclass(frozen=True)
class BenchmarkChoice:
    """What an evaluation reads of a dataset, checked against the registry in one look-up:
    the split ("" chose the dataset's evaluation split), the tests, and where a completion
    stops."""

    dataset: str
    split: str
    tests: TestChoice
    stop_sequences: tuple[str, ...]


def choose_benchmark(dataset: str, split: str = "", tests: str = "base") -> BenchmarkChoice:
    """`dataset`'s split and tests, each checked; an unknown dataset, a split or tests it
    lacks is one usage error."""
    fmt = FORMATS[assets.dataset_format(dataset)]  # an unknown dataset is a usage error
    spec = assets.spec(dataset)
    split = split or spec.eval_split
    _require_split(dataset, fmt, split)
    return BenchmarkChoice(dataset, split, _require_tests(dataset, fmt, tests), spec.stop_sequences)


@dataclass(frozen=True)
class Benchmark:
    """The tasks of one split: all their ids in file order, and the problems (with their
    prompts) of those selected; `raw_sha256` is the SHA-256 of each raw file's bytes as
    they were read (by path)."""

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


def load_benchmark(
    layout: Layout,
    dataset: str,
    split: str,
    *,
    tests: TestChoice = "base",
    only: Collection[str] | None = None,
    limit: int | None = None,
) -> Benchmark:
    """Every task of a split, and the problems of those selected: `only` these ids (CodeContests
    rows carry MBs of tests), or the first `limit`, or all. Each raw file is read once,
    parsed and hashed together. A row that does not parse is one error naming its file and
    line."""
    fmt = benchmark_format(dataset)
    _require_split(dataset, fmt, split)
    files = raw_files(layout, dataset, split)
    digests = {str(path): hashlib.sha256() for path in files}
    task_ids: list[str] = []
    seen: set[str] = set()
    problems: dict[str, Problem] = {}
    prompts: dict[str, PromptParts] = {}
    for path in files:
        for line, row in _hashed_rows(path, digests[str(path)]):
            try:
                if fmt.row_split(row, path, line, split) != split:
                    continue
                problem = fmt.parse(dataset, row, path, line, tests)
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
                    prompts[problem.task_id] = evaluation_prompt(
                        dataset, row, path, line, challenge_tests=tests == "all"
                    )
            except Rejected as exc:
                raise WmtpError(f"line {line}: {exc.reason}", path=path) from None
            except (TypeError, ValueError, AttributeError) as exc:
                raise WmtpError(
                    f"line {line}: unexpected value ({type(exc).__name__}: {exc})", path=path
                ) from None
    raw_sha256 = {name: digest.hexdigest() for name, digest in digests.items()}
    return Benchmark(
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


def load_problems(
    layout: Layout, dataset: str, split: str = "test", only: Collection[str] | None = None
) -> dict[str, Problem]:
    """Problems by task id (the split's standard tests); with `only`, just those."""
    return load_benchmark(layout, dataset, split, only=only).problems
