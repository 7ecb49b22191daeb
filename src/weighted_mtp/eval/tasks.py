"""Evaluation problems read from the raw upstream records in the storage, and how a
completion for each becomes a sandbox job. The dataset's row schema
(`AssetSpec.dataset_format`) chooses how a row becomes a problem; its raw file is the
registry's `raw_file` (or the split's file).

- HumanEval: the completion continues the function `prompt`; the sample's program is
  `prompt + completion`, and its judge runs the prompt's own helpers, then `test +
  check(entry_point)` with `entry_point` the sample's: the harness's check program, with
  tests and sample in separate processes.
- MBPP: the completion is a whole program; the judge runs `test_setup_code`, then the
  `test_list` asserts (the challenge tests are left out, as in the MBPP paper's
  evaluation); the names the reference solution defines are taken from the sample even
  where they are built-ins (task 126 asks for a function named `sum`).
- CodeContests: the completion is a whole program run on the public, private and generated
  tests via stdin/stdout under the problem's time limit (memory: its limit plus headroom
  for the interpreter).
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.assets import DatasetFormat
from weighted_mtp.data.sources import field, iter_jsonl
from weighted_mtp.errors import WmtpError
from weighted_mtp.eval.sandbox import Job
from weighted_mtp.storage.layout import Layout

CODECONTESTS_TEST_KEYS = ("public_tests", "private_tests", "generated_tests")
DEFAULT_TIME_LIMIT = 2.0  # seconds, for CodeContests problems that record none
INTERPRETER_HEADROOM = 512 << 20  # address space Python itself needs beyond a problem's limit


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
    """MBPP ids may be given bare (`11`) or as prepared records name them (`mbpp/11`)."""
    numbered = assets.spec(dataset).numbered_tasks
    if numbered and (isinstance(task_id, int) or str(task_id).isdigit()):
        return f"{dataset}/{int(task_id)}"
    return str(task_id)


def _humaneval(dataset: str, row: dict[str, Any], path: Path, line: int) -> Problem:
    entry_point = field(row, "entry_point", path, line)
    return Problem(
        dataset,
        str(field(row, "task_id", path, line)),
        field(row, "prompt", path, line),
        field(row, "test", path, line) + "\n" + f"check({entry_point})\n",
        entry_points=(entry_point,),
    )


def defined_builtin_names(reference: str, tests: str) -> tuple[str, ...]:
    """Top-level names the reference solution defines that the tests use and that are
    also built-ins: the judge must take those from the sample (plain Python would, since
    program and tests share one namespace); every other built-in stays the judge's own."""
    try:
        program, test = ast.parse(reference), ast.parse(tests)
    except (SyntaxError, ValueError):
        return ()
    defined = set()
    for node in program.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    used = {node.id for node in ast.walk(test) if isinstance(node, ast.Name)}
    return tuple(sorted(name for name in defined & used if hasattr(builtins, name)))


def _mbpp(dataset: str, row: dict[str, Any], path: Path, line: int) -> Problem:
    setup = row.get("test_setup_code") or ""
    tests = "\n".join(field(row, "test_list", path, line))
    program = f"{setup}\n{tests}\n"
    return Problem(
        dataset,
        canonical_task_id(dataset, field(row, "task_id", path, line)),
        "",
        program,
        entry_points=defined_builtin_names(str(row.get("code") or ""), program),
    )


def _time_limit(row: dict[str, Any]) -> float:
    limit = row.get("time_limit") or {}
    seconds = float(limit.get("seconds") or 0) + float(limit.get("nanos") or 0) / 1e9
    return seconds or DEFAULT_TIME_LIMIT


def _codecontests(dataset: str, row: dict[str, Any], path: Path, line: int) -> Problem:
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


# How a row of each upstream schema becomes a problem.
PARSERS: dict[DatasetFormat, Callable[[str, dict[str, Any], Path, int], Problem]] = {
    "openai-humaneval": _humaneval,
    "google-mbpp": _mbpp,
    "deepmind-code-contests": _codecontests,
}


def load_problems(
    layout: Layout, dataset: str, split: str = "test", only: Iterable[str] | None = None
) -> dict[str, Problem]:
    """Problems by task id; with `only`, just those (CodeContests rows carry MBs of tests)."""
    parse = PARSERS[assets.dataset_format(dataset)]
    wanted = set(only) if only is not None else None
    problems: dict[str, Problem] = {}
    for path in raw_files(layout, dataset, split):
        for line, row in iter_jsonl(path):
            try:
                problem = parse(dataset, row, path, line)
            except (TypeError, ValueError, AttributeError) as exc:
                raise WmtpError(
                    f"line {line}: unexpected value ({type(exc).__name__}: {exc})", path=path
                ) from None
            if wanted is None or problem.task_id in wanted:
                problems[problem.task_id] = problem
    return problems
