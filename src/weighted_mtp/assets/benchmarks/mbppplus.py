"""MBPP+ (evalplus/mbppplus): EvalPlus's MBPP, 378 tasks with 35x more tests.

One Parquet file on the hub, in MBPP's format plus EvalPlus's tests (`task_id` an integer,
`code` the reference solution, `prompt` the task's text, `source_file`, `test_imports`,
`test_list` MBPP's asserts, and `test`): 378 rows of MBPP+ v0.2.0, tasks from every MBPP
split (EvalPlus removed 21 of v0.1.0's 399 whose MBPP asserts were wrong), prepared as
`mbppplus/<n>`, all in one `test` split. `test` is what EvalPlus generated
(`tools/mbpp/to_original_fmt.py` of evalplus/evalplus): module-level code that calls the
task's function on MBPP's own inputs followed by EvalPlus's ("plus") inputs, de-duplicated,
and compares each output with the reference's, exactly, or for floats within the task's
`atol` (1e-6 where it is 0) by `np.allclose`; a few tasks compare otherwise (as sets, or
"not None", or against `ref_func`, the reference, in the judge).

Evaluation, as EvalPlus scores it: the base tests are MBPP's asserts (`test_list`, after
`test_imports`), the plus tests `test` (base and plus inputs together); a sample passes
plus when it passes both (`eval.scoring`). The completion is a whole program; as for MBPP,
the names the reference defines that are also built-ins are taken from the sample. The plus
tests run under `humanevalplus.TIME_LIMIT` for the whole task, calling ahead over the inputs
(`eval.sandbox.judge.CallAhead`). The demo's mirror is synthetic rows in this format at the
hub's path, a task with float outputs and an `atol` among them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.assets.benchmark import (
    BASE_TESTS,
    PLUS_TESTS,
    Benchmark,
    FunctionTests,
    OpenBinary,
    Problem,
    Task,
    TaskContext,
    TestChoice,
)
from weighted_mtp.assets.benchmarks.humanevalplus import (
    MIRROR_TASKS,
    ORACLE,
    TIME_LIMIT,
    MirrorTask,
    evalplus_inputs,
)
from weighted_mtp.assets.benchmarks.mbpp import with_reference_code
from weighted_mtp.assets.judged_names import judge_imports, names_taken_from_sample
from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import (
    field,
    list_of,
    non_empty_text,
    normalize_newlines,
    typed,
)

MIRROR_FILE = "data/test-00000-of-00001-d5781c9c51e02795.parquet"  # the hub's file
SHOWN_TESTS = "Your code should pass these tests:"  # a heading every prompt repeats
COLUMNS = ("task_id", "code", "prompt", "source_file", "test_imports", "test_list", "test")


def _base(row: dict[str, Any], path: Path, line: int) -> tuple[list[str], list[str]]:
    """(test_imports, test_list), newlines normalised."""
    imports = list_of(row.get("test_imports"), str, "test_imports", optional=True) or []
    asserts = list_of(field(row, "test_list", path, line), str, "test_list")
    return [normalize_newlines(i) for i in imports], [normalize_newlines(a) for a in asserts]


def _prompt(row: dict[str, Any], path: Path, line: int) -> PromptParts:
    _imports, asserts = _base(row, path, line)
    return PromptParts(
        non_empty_text(field(row, "prompt", path, line), "prompt"),
        SHOWN_TESTS + "\n" + "\n".join(asserts),
        f"The answer is judged by running the {len(asserts)} assert statements above, then "
        "many more inputs, each compared with the reference solution's output.\n"
        "Write the solution in Python 3.",
    )


class MbppPlus(Benchmark):
    name = "mbppplus"
    order = 21
    numbered_tasks = True
    raw_file = "MbppPlus"
    prepared_per_jsonl = 0.5  # measured 0.04: the tests are most of a row, no record holds them
    boilerplate_lines = frozenset({SHOWN_TESTS})

    def training_tasks(
        self, row: dict[str, Any], path: Path, line: int, context: TaskContext
    ) -> list[Task]:
        task_id = self.task_id(typed(row, "task_id", int, path, line))
        _imports, asserts = _base(row, path, line)
        task = Task.of(
            "test",
            task_id,
            _prompt(row, path, line),
            {"source": self.name, "has_tests": bool(asserts), "language": "python3"},
        )
        return [with_reference_code(task, row, path, line, context)]

    def prompt(self, row: dict[str, Any], path: Path, line: int, tests: TestChoice) -> PromptParts:
        return _prompt(row, path, line)

    def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
        imports, asserts = _base(row, path, line)
        base = "".join(i + "\n" for i in imports) + "\n".join(asserts) + "\n"
        reference = str(row.get("code") or "")
        taken = names_taken_from_sample(reference, base)
        plus = typed(row, "test", str, path, line)
        return Problem(
            self.name,
            self.task_id(typed(row, "task_id", int, path, line)),
            "",
            {
                BASE_TESTS: FunctionTests(judge_imports(reference, base) + base, taken),
                PLUS_TESTS: FunctionTests(plus, taken, time_limit=TIME_LIMIT),
            },
        )

    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        return write_mbppplus_mirror(out_dir, open_binary)


BENCHMARK = MbppPlus()


# --- the demo's synthetic mirror --------------------------------------------------------


@dataclass(frozen=True)
class _Numbered:
    number: int
    task: MirrorTask


def mbppplus_row(item: _Numbered, plus_inputs: int, seed: int) -> dict[str, Any]:
    """A row in the hub's format: MBPP's asserts on the base inputs, EvalPlus's loop over
    base + plus inputs as `test`."""
    task = item.task
    inputs = evalplus_inputs(task, plus_inputs, random.Random(seed * 1013 + item.number))
    results = [task.reference(*args) for args in inputs]
    compare = (
        "math.isclose({call}, {expected!r}, abs_tol={atol!r})"
        if task.atol
        else "{call} == {expected!r}"
    )
    asserts = [
        "assert "
        + compare.format(
            call=f"{task.entry_point}({', '.join(map(repr, args))})",
            expected=task.reference(*args),
            atol=task.atol,
        )
        for args in task.base
    ]
    test = (
        f"{ORACLE}\n\ninputs = {inputs!r}\nresults = {results!r}\n"
        "for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
        f"    assertion({task.entry_point}(*inp), exp, {task.atol!r})\n"
    )
    doc = task.doc.split("\n")[0]
    return {
        "task_id": item.number,
        "code": f"{task.signature}\n{task.body}".replace("\n", "\r\n"),  # CRLF, as upstream
        "prompt": f"Write a function `{task.entry_point}`: {doc[0].lower()}{doc[1:]}",
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "test_imports": ["import math"] if task.atol else [],
        "test_list": asserts,
        "test": test,
    }


def write_mbppplus_mirror(
    out_dir: str | Path, open_binary: OpenBinary, *, plus_inputs: int = 400, seed: int = 0
) -> Path:
    """`out_dir/data/test-...parquet`: the mirror's tasks in the hub's schema (task numbers
    from several MBPP splits), with `plus_inputs` plus inputs each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    numbered = [_Numbered(n, t) for n, t in zip((2, 17, 126, 560, 802), MIRROR_TASKS, strict=True)]
    rows = [mbppplus_row(item, plus_inputs, seed) for item in numbered]
    table = pa.table({name: [row[name] for row in rows] for name in COLUMNS})
    with open_binary(out_dir / MIRROR_FILE) as handle:
        pq.write_table(table, handle)
    return out_dir
