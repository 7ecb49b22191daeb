"""HumanEval+ (evalplus/humanevalplus): EvalPlus's HumanEval with 80x more tests.

The hub's HumanEval+ is in HumanEval's own format, one file of 164 rows (`task_id`,
`prompt`, `canonical_solution`, `entry_point`, `test`): the same task ids and prompts as
HumanEval (with EvalPlus's fixes to a few prompts and solutions), and one `test` per task
that EvalPlus generated (`tools/humaneval/to_original_fmt.py` of evalplus/evalplus):
`check(candidate)` calls the function on HumanEval's own inputs followed by EvalPlus's
("plus") inputs, de-duplicated, and compares each output with the canonical solution's,
exactly, or for floats within the task's `atol` (1e-6 where it is 0) by `np.allclose`.
A few tasks compare otherwise (`find_zero`: the root's residual; tasks with huge outputs:
against `ref_func`, the canonical solution, in the judge). Base and plus inputs are merged
in that file, so its verdict is EvalPlus's "plus" verdict (a sample passes plus when it
passes both); EvalPlus's "base" number is HumanEval's own tests: the `humaneval` benchmark,
same task ids, which `wmtp eval compare --datasets humaneval,humanevalplus` shows beside it.

Training and prompts are HumanEval's (`humaneval.HumanEval`). Evaluation: the sample's
program is `prompt + completion`; the judge runs the prompt, then `test` and
`check(entry_point)`, calling ahead over the inputs (`eval.sandbox.judge.CallAhead`), under
`TIME_LIMIT` for the whole task (EvalPlus allows a task up to 60 s and each input 4x the
canonical solution's time, at least 4 s). The demo's mirror is synthetic rows in this
format at the hub's path, a task with float outputs and an `atol` among them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.assets.benchmark import OpenBinary
from weighted_mtp.assets.benchmarks.humaneval import HumanEval

TIME_LIMIT = 60.0  # seconds for all of a task's inputs: EvalPlus's cap per task (60 s)
MIRROR_FILE = "data/test-00000-of-00001-5973903632b82d40.parquet"  # the hub's file
COLUMNS = ("task_id", "prompt", "canonical_solution", "entry_point", "test")

# How the mirror's tests compare, as EvalPlus's do: exact, or for a float or a list of
# floats within `atol` (1e-6 where the task's is 0) by numpy's allclose (rtol 1e-07).
ORACLE = """import numpy as np


def _floats(value):
    if isinstance(value, float):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(item, float) for item in value
    )


def assertion(out, exp, atol):
    if out == exp:
        return
    tolerance = 1e-6 if atol == 0 and _floats(exp) else atol
    assert tolerance != 0, (out, exp)
    assert np.allclose(out, exp, rtol=1e-07, atol=tolerance), (out, exp)
"""


class HumanEvalPlus(HumanEval):
    name = "humanevalplus"
    order = 31
    raw_file = "HumanEvalPlus"
    prepared_per_jsonl = 0.5  # measured 0.04: the tests are most of a row, no record holds them
    time_limit = TIME_LIMIT

    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        return write_humanevalplus_mirror(out_dir, open_binary)


BENCHMARK = HumanEvalPlus()


# --- the demo's synthetic mirror --------------------------------------------------------


@dataclass(frozen=True)
class MirrorTask:
    """A synthetic task: its function, canonical body, reference, base inputs and a
    generator of plus inputs."""

    entry_point: str
    signature: str
    doc: str
    body: str
    reference: Callable[..., Any]
    base: list[list[Any]]
    plus: Callable[[random.Random], list[Any]]
    atol: float = 0.0


def _dedupe(items: list[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


MIRROR_TASKS = (
    MirrorTask(
        "add",
        "def add(x: int, y: int) -> int:",
        "Add two integers.\n    >>> add(2, 3)\n    5",
        "    return x + y\n",
        lambda x, y: x + y,
        [[0, 1], [2, 3], [-5, 7]],
        lambda rng: [rng.randint(-(10**12), 10**12), rng.randint(-(10**12), 10**12)],
    ),
    MirrorTask(
        "mean",
        "def mean(values: list) -> float:",
        "The arithmetic mean of a non-empty list of numbers.\n    >>> mean([1.0, 2.0])\n    1.5",
        "    return sum(values) / len(values)\n",
        lambda values: sum(values) / len(values),
        [[[1.0, 2.0]], [[4.0]], [[0.5, 0.25, 0.125]]],
        lambda rng: [[rng.uniform(-1e3, 1e3) for _ in range(rng.randint(1, 30))]],
    ),
    MirrorTask(
        "hypotenuse",
        "def hypotenuse(a: float, b: float) -> float:",
        "The hypotenuse of a right triangle, to 4 decimals or better.\n"
        "    >>> round(hypotenuse(3.0, 4.0), 4)\n    5.0",
        "    return (a * a + b * b) ** 0.5\n",
        lambda a, b: (a * a + b * b) ** 0.5,
        [[3.0, 4.0], [5.0, 12.0], [1.0, 1.0]],
        lambda rng: [rng.uniform(0, 1e4), rng.uniform(0, 1e4)],
        atol=1e-4,
    ),
    MirrorTask(
        "dedupe",
        "def dedupe(items: list) -> list:",
        "The items in their first order, each once.\n    >>> dedupe([3, 1, 3])\n    [3, 1]",
        "    return list(dict.fromkeys(items))\n",
        _dedupe,
        [[[3, 1, 3]], [[1, 2]], [[5, 5, 5]]],
        lambda rng: [[rng.randint(0, 9) for _ in range(rng.randint(0, 20))]],
    ),
    MirrorTask(
        "largest",
        "def largest(values: list):",
        "The largest value, or None for an empty list.\n    >>> largest([2, 7, 1])\n    7",
        "    return max(values) if values else None\n",
        lambda values: max(values) if values else None,
        [[[2, 7, 1]], [[-3]], [[4, 4]]],
        lambda rng: [[rng.randint(-99, 99) for _ in range(rng.randint(0, 12))]],
    ),
)


def evalplus_inputs(task: MirrorTask, count: int, rng: random.Random) -> list[list[Any]]:
    """The base inputs, then `count` plus inputs, de-duplicated in order (as EvalPlus
    merges them)."""
    merged: dict[str, list[Any]] = {}
    for inputs in [*task.base, *(task.plus(rng) for _ in range(count))]:
        merged.setdefault(repr(inputs), inputs)
    return list(merged.values())


def humanevalplus_row(index: int, task: MirrorTask, plus_inputs: int, seed: int) -> dict[str, Any]:
    """A row in the hub's format: EvalPlus's `check(candidate)` over base + plus inputs."""
    inputs = evalplus_inputs(task, plus_inputs, random.Random(seed * 1009 + index))
    results = [task.reference(*args) for args in inputs]
    test = (
        f"{ORACLE}\n\ndef check(candidate):\n    inputs = {inputs!r}\n    results = {results!r}\n"
        "    for i, (inp, exp) in enumerate(zip(inputs, results)):\n"
        f"        assertion(candidate(*inp), exp, {task.atol!r})\n"
    )
    return {
        "task_id": f"HumanEval/{index}",
        "prompt": f'{task.signature}\n    """{task.doc}\n    """\n',
        "canonical_solution": task.body,
        "entry_point": task.entry_point,
        "test": test,
    }


def write_humanevalplus_mirror(
    out_dir: str | Path, open_binary: OpenBinary, *, plus_inputs: int = 400, seed: int = 0
) -> Path:
    """`out_dir/data/test-...parquet`: the mirror's tasks in the hub's schema, with
    `plus_inputs` plus inputs each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    rows = [humanevalplus_row(i, t, plus_inputs, seed) for i, t in enumerate(MIRROR_TASKS)]
    table = pa.table({name: [row[name] for row in rows] for name in COLUMNS})
    with open_binary(out_dir / MIRROR_FILE) as handle:
        pq.write_table(table, handle)
    return out_dir
