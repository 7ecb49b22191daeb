"""CodeContests (deepmind/code_contests): competitive programming, stdin/stdout programs.

Rows are problems with public, private and generated tests and correct and incorrect
solutions in several languages; upstream splits are files (train, valid, test), one raw
JSONL file each. Training: one task per problem and chosen language, its correct and
incorrect solutions as samples. Evaluation: the completion is a whole program run on every
test via stdin/stdout under the problem's time limit (memory: its limit plus headroom for
the interpreter). The demo's mirror is Parquet in the upstream nested schema, with what
preparation must handle: over-long statements, code too long for any prompt, duplicate
solutions, other languages and incorrect solutions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp.assets.benchmark import (
    LANGUAGE_CODES,
    Benchmark,
    OpenBinary,
    Problem,
    Reject,
    StdioTests,
    Task,
    TaskContext,
    TestChoice,
)
from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import (
    Rejected,
    field,
    list_of,
    non_empty_text,
    normalize_newlines,
    of_type,
    optional,
    typed,
)
from weighted_mtp.assets.split_rules import SPLITS, part_split

if TYPE_CHECKING:
    import pyarrow as pa

LANGUAGE_TITLES = {
    "unknown": "any language",
    "python2": "Python 2",
    "cpp": "C++",
    "python3": "Python 3",
    "java": "Java",
}
ORIGINS = {  # contest_problem.proto's Source enum
    0: "unknown",
    1: "codechef",
    2: "codeforces",
    3: "hackerearth",
    4: "codejam",
    5: "atcoder",
    6: "aizu",
}
TEST_KEYS = ("public_tests", "private_tests", "generated_tests")
DEFAULT_TIME_LIMIT = 2.0  # seconds, for problems that record none
INTERPRETER_HEADROOM = 512 << 20  # address space Python itself needs beyond a problem's limit

_IO_HEADING = re.compile(r"^[ \t]*input[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)
SolutionBlock = tuple[list[int], list[Any]]  # (language codes, solutions), equal lengths


def _test_block(row: dict[str, Any], key: str) -> dict[str, list[str]]:
    """A tests struct `{input: [str], output: [str]}`; absent means none, null rejects."""
    if key not in row:
        return {"input": [], "output": []}
    block = of_type(row[key], dict, key)
    return {
        part: list_of(block.get(part), str, f"{key}.{part}", optional=True) or []
        for part in ("input", "output")
    }


def _examples(tests: dict[str, list[str]]) -> str:
    pairs = zip(tests["input"], tests["output"], strict=False)
    return "\n\n".join(f"Example input:\n{i}\nExample output:\n{o}" for i, o in pairs)


def split_description(description: str) -> tuple[str, str]:
    """(statement, input/output section with examples); the second is kept when shortening."""
    description = normalize_newlines(description)
    match = _IO_HEADING.search(description)
    if not match or not description[: match.start()].strip():
        return description, ""
    return description[: match.start()], description[match.start() :]


def _notes(row: dict[str, Any], counts: list[int], language: str) -> str:
    lines = []
    if sum(counts):
        lines.append(
            f"The program is judged on {sum(counts)} test cases ({counts[0]} public, "
            f"{counts[1]} private, {counts[2]} generated) by comparing its output."
        )
    else:
        lines.append("No test cases are available for this problem.")
    limit = optional(row, "time_limit", dict, {})
    seconds = (
        optional(limit, "seconds", int, 0, "time_limit.")
        + optional(limit, "nanos", int, 0, "time_limit.") / 1e9
    )
    if seconds:
        lines.append(f"Time limit: {seconds:g} s.")
    memory = optional(row, "memory_limit_bytes", int, 0)
    if memory:
        lines.append(f"Memory limit: {memory / 2**20:g} MB.")
    source_in = optional(row, "input_file", str, "") or "standard input"
    source_out = optional(row, "output_file", str, "") or "standard output"
    lines.append(f"Read from {source_in} and write to {source_out}.")
    lines.append(f"Write the solution in {LANGUAGE_TITLES[language]}.")
    return "\n".join(lines)


def _solution_block(row: dict[str, Any], key: str, path: Path, line: int) -> SolutionBlock:
    """(languages, solutions) of a `{language: [int], solution: [str]}` struct; a null
    struct rejects the row (it would silently lose every solution of its kind)."""
    block = typed(row, key, dict, path, line)
    languages = list_of(block.get("language"), int, f"{key}.language")
    solutions = of_type(block.get("solution"), list, f"{key}.solution")
    if len(languages) != len(solutions):
        raise Rejected(f"{key} has unequal numbers of languages and solutions")
    return languages, solutions


def _solutions(
    block: SolutionBlock, key: str, task_id: str, code: int, is_correct: bool, reject: Reject
) -> Iterator[tuple[str, str, bool]]:
    tag = "c" if is_correct else "i"
    for index, (lang, solution) in enumerate(zip(*block, strict=True)):
        if lang != code:
            continue
        try:
            text = non_empty_text(solution, f"a {key}.solution")
        except Rejected as exc:
            reject(exc.reason)
            continue
        yield f"{task_id}#{LANGUAGE_CODES.get(code, code)}-{tag}{index}", text, is_correct


def _prompt(row: dict[str, Any], path: Path, line: int, language: str) -> PromptParts:
    statement, io_section = split_description(
        non_empty_text(field(row, "description", path, line), "description")
    )
    tests = {key: _test_block(row, key) for key in TEST_KEYS}
    counts = [len(tests[key]["input"]) for key in TEST_KEYS]
    return PromptParts(
        statement,
        io_section or _examples(tests["public_tests"]),
        _notes(row, counts, language),
    )


def _time_limit(row: dict[str, Any]) -> float:
    limit = row.get("time_limit") or {}
    seconds = float(limit.get("seconds") or 0) + float(limit.get("nanos") or 0) / 1e9
    return seconds or DEFAULT_TIME_LIMIT


class CodeContests(Benchmark):
    name = "codecontests"
    order = 10
    splits = SPLITS
    jsonl_per_parquet = 2.5
    prepared_per_jsonl = 1.5

    def training_tasks(
        self, row: dict[str, Any], path: Path, line: int, context: TaskContext
    ) -> list[Task]:
        tasks = []
        task_id = non_empty_text(field(row, "name", path, line), "name")
        correct = _solution_block(row, "solutions", path, line)
        incorrect = _solution_block(row, "incorrect_solutions", path, line)
        tests = {key: _test_block(row, key) for key in TEST_KEYS}
        counts = [len(tests[key]["input"]) for key in TEST_KEYS]
        base = {
            "source": self.name,
            "has_tests": any(counts),
            "difficulty": optional(row, "difficulty", int, 0),
            "origin": ORIGINS.get(optional(row, "source", int, 0), "unknown"),
            "cf_rating": optional(row, "cf_rating", int, 0),
            "cf_tags": list_of(row.get("cf_tags"), str, "cf_tags", optional=True) or [],
            "num_tests": sum(counts),
        }
        split = part_split(path.stem, task_id, context.seed)
        for code in sorted(context.languages):
            language = LANGUAGE_CODES[code]
            prompt = _prompt(row, path, line, language)
            task = Task.of(split, task_id, prompt, {**base, "language": language})
            task.add_samples(
                [
                    *_solutions(correct, "solutions", task_id, code, True, context.reject),
                    *_solutions(
                        incorrect, "incorrect_solutions", task_id, code, False, context.reject
                    ),
                ]
            )
            if task.samples or task.duplicates:
                tasks.append(task)
        return tasks

    def prompt(self, row: dict[str, Any], path: Path, line: int, tests: TestChoice) -> PromptParts:
        """In Python 3, the language the sandbox runs."""
        return _prompt(row, path, line, "python3")

    def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
        cases: list[tuple[str, str]] = []
        for key in TEST_KEYS:
            group = row.get(key) or {}
            cases += zip(group.get("input") or [], group.get("output") or [], strict=True)
        memory = row.get("memory_limit_bytes") or 0
        tests = StdioTests(
            tuple(cases), _time_limit(row), memory + INTERPRETER_HEADROOM if memory else None
        )
        return Problem(self.name, str(field(row, "name", path, line)), "", {"base": tests})

    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        return write_codecontests_mirror(out_dir, open_binary)


BENCHMARK = CodeContests()


# --- the demo's synthetic mirror --------------------------------------------------------

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
    """One synthetic problem row in the upstream schema."""
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
    open_binary: OpenBinary,
    *,
    n_problems: int = 24,
    seed: int = 0,
    solutions_per_problem: int = 4,
    row_group_size: int = 4,
) -> Path:
    """`out_dir/data/{train,valid,test}-00000-of-00001.parquet`, written row group by row
    group (through `open_binary`) so that large corpora never sit in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    schema = _codecontests_schema()
    index = 0
    for split, count in _split_sizes(n_problems).items():
        target = out_dir / "data" / f"{split}-00000-of-00001.parquet"
        with open_binary(target) as handle, pq.ParquetWriter(handle, schema) as writer:
            for start in range(0, count, row_group_size):
                rows = [
                    codecontests_problem(rng, index + i, split, solutions_per_problem)
                    for i in range(start, min(count, start + row_group_size))
                ]
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            index += count
    return out_dir
