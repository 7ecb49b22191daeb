"""Raw rows of each dataset turned into tasks: one problem, its prompt parts, its samples.

A task's samples share one prompt (so it is tokenized once). Raw files are read line by
line; a problem is never held longer than it takes to turn it into its samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import assets
from weighted_mtp.data.sources import field as required
from weighted_mtp.data.sources import iter_jsonl
from weighted_mtp.data.splits import DisjointSplits, mbpp_split, part_split
from weighted_mtp.data.template import normalize_newlines
from weighted_mtp.errors import UsageError, WmtpError

# CodeContests' enums (deepmind/code_contests, contest_problem.proto).
CC_LANGUAGES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
CC_LANGUAGE_TITLES = {
    "unknown": "any language",
    "python2": "Python 2",
    "cpp": "C++",
    "python3": "Python 3",
    "java": "Java",
}
CC_ORIGINS = {
    0: "unknown",
    1: "codechef",
    2: "codeforces",
    3: "hackerearth",
    4: "codejam",
    5: "atcoder",
    6: "aizu",
}
DEFAULT_LANGUAGES = ("python3",)

_IO_HEADING = re.compile(r"^[ \t]*input[ \t]*:?[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class Sample:
    sample_id: str
    response: str
    is_correct: bool


@dataclass
class Task:
    split: str
    task_id: str
    instruction: str
    input_text: str
    notes: str
    metadata: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    duplicates: int = 0


def language_codes(languages: list[str] | tuple[str, ...] | None) -> set[int]:
    """CodeContests language codes for names like `python3` (or the numbers themselves)."""
    by_name = {name: code for code, name in CC_LANGUAGES.items()}
    codes = set()
    for language in languages or DEFAULT_LANGUAGES:
        key = str(language).strip().lower()
        if key.isdigit() and int(key) in CC_LANGUAGES:
            codes.add(int(key))
        elif key in by_name:
            codes.add(by_name[key])
        else:
            raise UsageError(
                f"unknown language {language!r}", hint=f"choose from: {', '.join(by_name)}"
            )
    return codes


def raw_parts(source_dir: Path) -> list[Path]:
    """Raw JSONL files: evaluation splits first (so prepare can refuse train records identical
    to held-out ones), then train, then files without an official split."""
    files = sorted(source_dir.glob("*.jsonl"))
    if not files:
        raise WmtpError(
            "no raw JSONL files", path=source_dir, hint="run `wmtp data download NAME` first"
        )
    order = {"validation": 0, "test": 1, "train": 2}
    return sorted(files, key=lambda p: (order.get(p.stem, len(order)), p.name))


def iter_tasks(
    dataset: str,
    source_dir: Path,
    *,
    seed: int,
    languages: list[str] | None = None,
    splits: DisjointSplits | None = None,
) -> Iterator[Task]:
    """Every task of a dataset's raw files, each checked to stay in one split."""
    splits = splits or DisjointSplits()
    convert = _CONVERTERS[assets.spec(dataset).dataset_format or ""]
    codes = language_codes(languages)
    seen: set[tuple[str, str]] = set()
    for path in raw_parts(source_dir):
        for line, row in iter_jsonl(path):
            try:
                tasks = convert(row, path, line, seed, codes)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                raise WmtpError(
                    f"line {line}: unexpected value ({type(exc).__name__}: {exc})",
                    path=path,
                    hint="is this the right dataset file?",
                ) from None
            for task in tasks:
                splits.assign(task.task_id, task.split)
                key = (task.task_id, task.metadata["language"])
                if key in seen:
                    raise WmtpError(
                        f"line {line}: task {task.task_id!r} appears a second time",
                        path=path,
                        hint="deduplicate the raw files",
                    )
                seen.add(key)
                yield task


def _dedupe(task: Task, candidates: Iterable[tuple[str, str, bool]]) -> Task:
    """Add samples, keeping a solution that appears twice for the task once."""
    seen: set[str] = set()
    for sample_id, code, is_correct in candidates:
        code = normalize_newlines(code)
        if not code.strip():
            continue
        if code in seen:
            task.duplicates += 1
            continue
        seen.add(code)
        task.samples.append(Sample(sample_id, code, is_correct))
    return task


# --- CodeContests ----------------------------------------------------------------------


def _tests(row: dict[str, Any], key: str) -> list[str]:
    return list((row.get(key) or {}).get("input") or [])


def _examples(row: dict[str, Any]) -> str:
    tests = row.get("public_tests") or {}
    pairs = zip(tests.get("input") or [], tests.get("output") or [], strict=False)
    return "\n\n".join(f"Example input:\n{i}\nExample output:\n{o}" for i, o in pairs)


def split_description(description: str) -> tuple[str, str]:
    """(statement, input/output section with examples); the second is kept when shortening."""
    description = normalize_newlines(description)
    match = _IO_HEADING.search(description)
    if not match or not description[: match.start()].strip():
        return description, ""
    return description[: match.start()], description[match.start() :]


def _codecontests_notes(row: dict[str, Any], language: str) -> str:
    counts = [len(_tests(row, k)) for k in ("public_tests", "private_tests", "generated_tests")]
    lines = []
    if sum(counts):
        lines.append(
            f"The program is judged on {sum(counts)} test cases ({counts[0]} public, "
            f"{counts[1]} private, {counts[2]} generated) by comparing its output."
        )
    else:
        lines.append("No test cases are available for this problem.")
    limit = row.get("time_limit") or {}
    seconds = (limit.get("seconds") or 0) + (limit.get("nanos") or 0) / 1e9
    if seconds:
        lines.append(f"Time limit: {seconds:g} s.")
    if row.get("memory_limit_bytes"):
        lines.append(f"Memory limit: {row['memory_limit_bytes'] / 2**20:g} MB.")
    source_in = row.get("input_file") or "standard input"
    source_out = row.get("output_file") or "standard output"
    lines.append(f"Read from {source_in} and write to {source_out}.")
    lines.append(f"Write the solution in {CC_LANGUAGE_TITLES[language]}.")
    return "\n".join(lines)


def _solutions(row, key, task_id, code, is_correct, path, line):
    block = row.get(key) or {}
    languages, solutions = block.get("language") or [], block.get("solution") or []
    if len(languages) != len(solutions):
        raise WmtpError(
            f"line {line}: {key} has {len(languages)} languages but {len(solutions)} solutions",
            path=path,
        )
    tag = "c" if is_correct else "i"
    for index, (lang, solution) in enumerate(zip(languages, solutions, strict=True)):
        if lang == code:
            yield f"{task_id}#{CC_LANGUAGES.get(code, code)}-{tag}{index}", solution, is_correct


def _codecontests_tasks(
    row: dict[str, Any], path: Path, line: int, seed: int, codes: set[int]
) -> list[Task]:
    tasks = []
    task_id = str(required(row, "name", path, line))
    statement, io_section = split_description(str(required(row, "description", path, line)))
    required(row, "solutions", path, line)
    has_tests = any(_tests(row, k) for k in ("public_tests", "private_tests", "generated_tests"))
    base = {
        "source": "codecontests",
        "has_tests": has_tests,
        "difficulty": int(row.get("difficulty") or 0),
        "origin": CC_ORIGINS.get(row.get("source") or 0, "unknown"),
        "cf_rating": int(row.get("cf_rating") or 0),
        "cf_tags": list(row.get("cf_tags") or []),
        "num_tests": sum(
            len(_tests(row, k)) for k in ("public_tests", "private_tests", "generated_tests")
        ),
    }
    split = part_split(path.stem, task_id, seed)
    for code in sorted(codes):
        language = CC_LANGUAGES[code]
        task = Task(
            split,
            task_id,
            statement,
            io_section or _examples(row),
            _codecontests_notes(row, language),
            {**base, "language": language},
        )
        candidates = [
            *_solutions(row, "solutions", task_id, code, True, path, line),
            *_solutions(row, "incorrect_solutions", task_id, code, False, path, line),
        ]
        _dedupe(task, candidates)
        if task.samples or task.duplicates:
            tasks.append(task)
    return tasks


# --- MBPP ------------------------------------------------------------------------------


def _mbpp_tasks(
    row: dict[str, Any], path: Path, line: int, seed: int, codes: set[int]
) -> list[Task]:
    number = required(row, "task_id", path, line)
    if not isinstance(number, int):
        raise WmtpError(f"line {line}: task_id {number!r} is not an integer", path=path)
    tests = [normalize_newlines(t) for t in required(row, "test_list", path, line)]
    challenge = row.get("challenge_test_list") or []
    setup = normalize_newlines(row.get("test_setup_code") or "")
    input_text = "Your code should pass these tests:\n" + "\n".join(tests)
    if setup.strip():
        input_text = f"Test setup code:\n{setup}\n\n{input_text}"
    notes = (
        f"The answer is judged by running the {len(tests)} assert statements above"
        + (f" and {len(challenge)} challenge tests" if challenge else "")
        + ".\nWrite the solution in Python 3."
    )
    task_id = f"mbpp/{number}"
    task = Task(
        mbpp_split(number, seed),
        task_id,
        str(required(row, "text", path, line)),
        input_text,
        notes,
        {
            "source": "mbpp",
            "has_tests": bool(tests),
            "language": "python3",
            "num_tests": len(tests) + len(challenge),
        },
    )
    code = str(required(row, "code", path, line))
    return [_dedupe(task, [(f"{task_id}#c0", code, True)])]


# --- HumanEval -------------------------------------------------------------------------


def _humaneval_tasks(
    row: dict[str, Any], path: Path, line: int, seed: int, codes: set[int]
) -> list[Task]:
    task_id = str(required(row, "task_id", path, line))
    entry_point = str(required(row, "entry_point", path, line))
    signature = normalize_newlines(str(required(row, "prompt", path, line)))
    solution = str(required(row, "canonical_solution", path, line))
    has_tests = bool(str(row.get("test") or "").strip())
    task = Task(
        "test",
        task_id,
        f"Complete the Python function `{entry_point}` so that it does what its "
        "docstring says. Respond with the body of the function only.",
        signature,
        f"The answer is judged by hidden unit tests (`check({entry_point})`) run on "
        "the completed function.\nWrite the solution in Python 3.",
        {
            "source": "humaneval",
            "has_tests": has_tests,
            "language": "python3",
            "entry_point": entry_point,
        },
    )
    return [_dedupe(task, [(f"{task_id}#c0", solution, True)])]


# How each upstream row schema (`AssetSpec.dataset_format`) becomes tasks.
_CONVERTERS: dict[str, Callable[[dict[str, Any], Path, int, int, set[int]], list[Task]]] = {
    "codecontests": _codecontests_tasks,
    "mbpp": _mbpp_tasks,
    "humaneval": _humaneval_tasks,
}
