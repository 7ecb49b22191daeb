"""MBPP (google-research-datasets/mbpp): short Python functions judged by asserts.

One raw file (`mbpp.jsonl`); tasks are numbered, prepared as `mbpp/<n>`. The official
splits (Austin et al. 2021) are task-number ranges: 1-10 the few-shot prompt tasks, then
test, validation and train; evaluation reads those, training puts the prompt tasks in train
and hash-splits a number beyond the benchmark's. Evaluation: the completion is a whole
program; the judge runs `test_setup_code`, then the `test_list` asserts and, with
`--tests all`, the `challenge_test_list` asserts too (left out by default, as in the MBPP
paper's evaluation); names the reference solution defines are taken from the sample even
where they are built-ins (task 126 asks for a function named `sum`). The demo's mirror is
`mbpp.jsonl` with task numbers spread over every official split (and CRLF code, as upstream).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from weighted_mtp.assets.benchmark import (
    BASE_TESTS,
    Benchmark,
    FunctionTests,
    OpenBinary,
    Problem,
    Task,
    TaskContext,
    TestChoice,
)
from weighted_mtp.assets.judged_names import judge_imports, names_taken_from_sample
from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import (
    Rejected,
    field,
    list_of,
    non_empty_text,
    normalize_newlines,
    optional,
    typed,
)
from weighted_mtp.assets.split_rules import hash_split

CHALLENGE_TESTS: TestChoice = "all"
SHOWN_TESTS = "Your code should pass these tests:"
SETUP_CODE = "Test setup code:"
# The official splits, as the benchmark names them.
OFFICIAL_RANGES = (
    ((1, 10), "prompt"),
    ((11, 510), "test"),
    ((511, 600), "validation"),
    ((601, 974), "train"),
)
OFFICIAL_SPLITS = tuple(split for _range, split in OFFICIAL_RANGES)


def official_split(task_number: int) -> str | None:
    """The official MBPP split of a task (None for a number beyond the benchmark's)."""
    for (low, high), split in OFFICIAL_RANGES:
        if low <= task_number <= high:
            return split
    return None


def prepared_split(task_number: int, seed: int) -> str:
    """The prepared split: the official one, the prompt tasks trained on; a number beyond
    the benchmark's is hash-split."""
    official = official_split(task_number)
    if official is None:
        return hash_split(f"{BENCHMARK.name}/{task_number}", seed)
    return "train" if official == "prompt" else official


def _tests(row: dict[str, Any], path: Path, line: int) -> tuple[list[str], list[str]]:
    """(test_list, challenge_test_list), newlines normalised."""
    listed = list_of(field(row, "test_list", path, line), str, "test_list")
    challenge = list_of(row.get("challenge_test_list"), str, "challenge_test_list", optional=True)
    return [normalize_newlines(t) for t in listed], challenge or []


def _prompt(row: dict[str, Any], path: Path, line: int, challenge_runs: bool) -> PromptParts:
    """The shown tests, and notes that name what judges the answer: the asserts, and the
    challenge tests too where they run."""
    tests, challenge = _tests(row, path, line)
    setup = normalize_newlines(optional(row, "test_setup_code", str, ""))
    input_text = f"{SHOWN_TESTS}\n" + "\n".join(tests)
    if setup.strip():
        input_text = f"{SETUP_CODE}\n{setup}\n\n{input_text}"
    notes = (
        f"The answer is judged by running the {len(tests)} assert statements above"
        + (f" and {len(challenge)} challenge tests" if challenge and challenge_runs else "")
        + ".\nWrite the solution in Python 3."
    )
    return PromptParts(non_empty_text(field(row, "text", path, line), "text"), input_text, notes)


def _judged(row: dict[str, Any], asserts: list[str]) -> FunctionTests:
    setup = row.get("test_setup_code") or ""
    tests = f"{setup}\n" + "\n".join(asserts) + "\n"
    reference = str(row.get("code") or "")
    return FunctionTests(
        judge_imports(reference, tests) + tests, names_taken_from_sample(reference, tests)
    )


def with_reference_code(
    task: Task, row: dict[str, Any], path: Path, line: int, context: TaskContext
) -> Task:
    """`task` with the row's reference `code` as its one correct sample; a row without one
    is counted as a rejection and adds none."""
    try:
        code = non_empty_text(field(row, "code", path, line), "code")
    except Rejected as exc:
        context.reject(exc.reason)
        return task
    return task.add_samples([(f"{task.task_id}#c0", code, True)])


class Mbpp(Benchmark):
    name = "mbpp"
    order = 20
    splits = OFFICIAL_SPLITS
    numbered_tasks = True
    raw_file = "mbpp"
    prepared_per_jsonl = 3.0
    extra_tests = MappingProxyType({CHALLENGE_TESTS: "challenge tests"})
    boilerplate_lines = frozenset({SHOWN_TESTS, SETUP_CODE})

    def training_tasks(
        self, row: dict[str, Any], path: Path, line: int, context: TaskContext
    ) -> list[Task]:
        number = typed(row, "task_id", int, path, line)
        tests, challenge = _tests(row, path, line)
        task_id = f"{self.name}/{number}"  # `numbered_tasks`
        task = Task.of(
            prepared_split(number, context.seed),
            task_id,
            _prompt(row, path, line, challenge_runs=True),
            {
                "source": self.name,
                "has_tests": bool(tests),
                "language": "python3",
                "num_tests": len(tests) + len(challenge),
            },
        )
        return [with_reference_code(task, row, path, line, context)]

    def prompt(self, row: dict[str, Any], path: Path, line: int, tests: TestChoice) -> PromptParts:
        return _prompt(row, path, line, challenge_runs=tests == CHALLENGE_TESTS)

    def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
        asserts = list(field(row, "test_list", path, line))
        challenge = row.get("challenge_test_list") or []
        return Problem(
            self.name,
            self.task_id(field(row, "task_id", path, line)),
            "",
            {
                BASE_TESTS: _judged(row, asserts),
                CHALLENGE_TESTS: _judged(row, asserts + list(challenge)),
            },
        )

    def row_split(self, row: dict[str, Any], path: Path, line: int, file_split: str) -> str | None:
        return official_split(typed(row, "task_id", int, path, line))

    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        return write_mbpp_mirror(out_dir, open_binary)


BENCHMARK = Mbpp()


# --- the demo's synthetic mirror --------------------------------------------------------


def _mirror_rows(task_ids: list[int], rng: random.Random) -> Iterator[dict[str, Any]]:
    for task_id in task_ids:
        k = rng.randint(1, 9)
        code = f"def add_{task_id}(a, b):\r\n    return a + b + {k}"
        tests = [
            f"assert add_{task_id}({a}, {b}) == {a + b + k}" for a, b in ((1, 2), (3, 4), (5, 6))
        ]
        yield {
            "task_id": task_id,
            "text": f"Write a function that adds two numbers and {k} (task {task_id}).",
            "code": code,
            "test_list": tests,
            "test_setup_code": "",
            "challenge_test_list": [],
        }


def write_mbpp_mirror(
    out_dir: str | Path, open_binary: OpenBinary, *, n_tasks: int = 40, seed: int = 0
) -> Path:
    """`out_dir/mbpp.jsonl` with task ids spread over 1..974 (every official split)."""
    out_dir = Path(out_dir)
    n_tasks = max(4, min(n_tasks, 974))
    task_ids = sorted({1 + round(i * 973 / (n_tasks - 1)) for i in range(n_tasks)})
    rng = random.Random(seed)
    with open_binary(out_dir / "mbpp.jsonl") as handle:
        for row in _mirror_rows(task_ids, rng):
            handle.write((json.dumps(row) + "\n").encode())
    return out_dir
