"""Raw rows of each dataset turned into tasks: one problem, its prompt parts, its samples.

A task's samples share one prompt (so it is tokenized once). Raw files are read line by
line; a problem is never held longer than it takes to turn it into its samples.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from weighted_mtp import assets
from weighted_mtp.data.sources import Rejected, list_of, non_empty_text, of_type, typed
from weighted_mtp.data.sources import field as required
from weighted_mtp.data.splits import DisjointSplits, mbpp_split, part_split
from weighted_mtp.data.template import PROMPT_TEMPLATE, PromptParts, normalize_newlines
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.limits import current_limits
from weighted_mtp.storage.jsonl import iter_jsonl

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

    @property
    def prompt(self) -> PromptParts:
        return PromptParts(self.instruction, self.input_text, self.notes)


def _fields(prompt: PromptParts) -> tuple[str, str, str]:
    """A Task's prompt fields, in its order."""
    return prompt.instruction, prompt.input_text, prompt.notes


@dataclass
class Rejections:
    """Rows and samples dropped because a field has the wrong type (a null where the
    upstream schema has a string, say) or a text is beyond the size limit: counted by reason,
    with the first place each reason was seen, for the preparation summary."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, kind: str, reason: str, path: Path, line: int) -> None:
        counts = self.rows if kind == "rows" else self.samples
        entry = counts.setdefault(reason, {"count": 0, "first": f"{path.name} line {line}"})
        entry["count"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "samples": self.samples}


T = TypeVar("T")
SolutionBlock = tuple[list[int], list[Any]]  # (language codes, solutions), equal lengths
Reject = Callable[[str], None]  # records a rejected sample of the row being converted


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
    rejections: Rejections | None = None,
) -> Iterator[Task]:
    """Every task of a dataset's raw files, each checked to stay in one split. Rows and
    samples of the wrong types or sizes are left out and counted in `rejections`; a file
    that gives no sample at all because of them is an error."""
    splits = splits or DisjointSplits()
    rejections = rejections if rejections is not None else Rejections()
    convert = CONVERTERS[assets.dataset_format(dataset)]
    codes = language_codes(languages)
    max_chars = current_limits().max_text_chars
    seen: set[tuple[str, str]] = set()
    for path in raw_parts(source_dir):
        usable = 0
        first_rejected: list[str] = []
        for line, row in iter_jsonl(path):
            reject = functools.partial(_reject, rejections, first_rejected, path, line)
            try:
                tasks = convert(dataset, row, path, line, seed, codes, reject)
                tasks = [_limit_texts(task, max_chars, reject) for task in tasks]
            except Rejected as exc:
                reject(exc.reason, "rows")
                continue
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
                usable += len(task.samples)
                yield task
        if not usable and first_rejected:
            raise WmtpError(
                "no usable sample: every row or solution was rejected for its types or sizes "
                f"(first: {first_rejected[0]})",
                path=path,
                hint="is this the right dataset file?",
            )


def _reject(
    rejections: Rejections,
    first: list[str],
    path: Path,
    line: int,
    reason: str,
    kind: str = "samples",
) -> None:
    rejections.add(kind, reason, path, line)
    first[:] = first[:1] or [f"line {line}: {reason}"]


def _limit_texts(task: Task, max_chars: int, reject: Reject) -> Task:
    """Texts beyond `max_chars` are never tokenized (memory and time would grow with them):
    such a prompt rejects the row, such a response its sample."""
    texts = (task.instruction, task.input_text, task.notes, PROMPT_TEMPLATE)
    if sum(map(len, texts)) > max_chars:  # at least the rendered prompt's length
        raise Rejected(f"prompt over {max_chars:,} characters")
    kept = [sample for sample in task.samples if len(sample.response) <= max_chars]
    for _ in range(len(task.samples) - len(kept)):
        reject(f"response over {max_chars:,} characters")
    task.samples = kept
    return task


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

_TEST_BLOCKS = ("public_tests", "private_tests", "generated_tests")


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


def _optional(row: dict[str, Any], key: str, kind: type[T], default: T, within: str = "") -> T:
    value = of_type(row.get(key), kind, f"{within}{key}", optional=True)
    return default if value is None else value


def _codecontests_notes(row: dict[str, Any], counts: list[int], language: str) -> str:
    lines = []
    if sum(counts):
        lines.append(
            f"The program is judged on {sum(counts)} test cases ({counts[0]} public, "
            f"{counts[1]} private, {counts[2]} generated) by comparing its output."
        )
    else:
        lines.append("No test cases are available for this problem.")
    limit = _optional(row, "time_limit", dict, {})
    seconds = (
        _optional(limit, "seconds", int, 0, "time_limit.")
        + _optional(limit, "nanos", int, 0, "time_limit.") / 1e9
    )
    if seconds:
        lines.append(f"Time limit: {seconds:g} s.")
    memory = _optional(row, "memory_limit_bytes", int, 0)
    if memory:
        lines.append(f"Memory limit: {memory / 2**20:g} MB.")
    source_in = _optional(row, "input_file", str, "") or "standard input"
    source_out = _optional(row, "output_file", str, "") or "standard output"
    lines.append(f"Read from {source_in} and write to {source_out}.")
    lines.append(f"Write the solution in {CC_LANGUAGE_TITLES[language]}.")
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
        yield f"{task_id}#{CC_LANGUAGES.get(code, code)}-{tag}{index}", text, is_correct


def _codecontests_prompt(row: dict[str, Any], path: Path, line: int, language: str) -> PromptParts:
    statement, io_section = split_description(
        non_empty_text(required(row, "description", path, line), "description")
    )
    tests = {key: _test_block(row, key) for key in _TEST_BLOCKS}
    counts = [len(tests[key]["input"]) for key in _TEST_BLOCKS]
    return PromptParts(
        statement,
        io_section or _examples(tests["public_tests"]),
        _codecontests_notes(row, counts, language),
    )


def _codecontests_tasks(
    dataset: str,
    row: dict[str, Any],
    path: Path,
    line: int,
    seed: int,
    codes: set[int],
    reject: Reject,
) -> list[Task]:
    tasks = []
    task_id = non_empty_text(required(row, "name", path, line), "name")
    correct = _solution_block(row, "solutions", path, line)
    incorrect = _solution_block(row, "incorrect_solutions", path, line)
    tests = {key: _test_block(row, key) for key in _TEST_BLOCKS}
    counts = [len(tests[key]["input"]) for key in _TEST_BLOCKS]
    base = {
        "source": dataset,
        "has_tests": any(counts),
        "difficulty": _optional(row, "difficulty", int, 0),
        "origin": CC_ORIGINS.get(_optional(row, "source", int, 0), "unknown"),
        "cf_rating": _optional(row, "cf_rating", int, 0),
        "cf_tags": list_of(row.get("cf_tags"), str, "cf_tags", optional=True) or [],
        "num_tests": sum(counts),
    }
    split = part_split(path.stem, task_id, seed)
    for code in sorted(codes):
        language = CC_LANGUAGES[code]
        prompt = _codecontests_prompt(row, path, line, language)
        task = Task(split, task_id, *_fields(prompt), {**base, "language": language})
        candidates = [
            *_solutions(correct, "solutions", task_id, code, True, reject),
            *_solutions(incorrect, "incorrect_solutions", task_id, code, False, reject),
        ]
        _dedupe(task, candidates)
        if task.samples or task.duplicates:
            tasks.append(task)
    return tasks


# --- MBPP ------------------------------------------------------------------------------


def _sample_text(value: Any, label: str, reject: Reject) -> list[str]:
    """`[value]` if it is a usable solution text, else `[]` with the sample rejected."""
    try:
        return [non_empty_text(value, label)]
    except Rejected as exc:
        reject(exc.reason)
        return []


def _mbpp_tests(row: dict[str, Any], path: Path, line: int) -> tuple[list[str], list[str]]:
    """(test_list, challenge_test_list), newlines normalised."""
    listed = list_of(required(row, "test_list", path, line), str, "test_list")
    challenge = list_of(row.get("challenge_test_list"), str, "challenge_test_list", optional=True)
    return [normalize_newlines(t) for t in listed], challenge or []


def _mbpp_prompt(row: dict[str, Any], path: Path, line: int, challenge_runs: bool) -> PromptParts:
    """The shown tests, and notes that name what judges the answer: the asserts, and the
    challenge tests too where they run."""
    tests, challenge = _mbpp_tests(row, path, line)
    setup = normalize_newlines(_optional(row, "test_setup_code", str, ""))
    input_text = "Your code should pass these tests:\n" + "\n".join(tests)
    if setup.strip():
        input_text = f"Test setup code:\n{setup}\n\n{input_text}"
    notes = (
        f"The answer is judged by running the {len(tests)} assert statements above"
        + (f" and {len(challenge)} challenge tests" if challenge and challenge_runs else "")
        + ".\nWrite the solution in Python 3."
    )
    return PromptParts(non_empty_text(required(row, "text", path, line), "text"), input_text, notes)


def _mbpp_tasks(
    dataset: str,
    row: dict[str, Any],
    path: Path,
    line: int,
    seed: int,
    codes: set[int],
    reject: Reject,
) -> list[Task]:
    number = typed(row, "task_id", int, path, line)
    tests, challenge = _mbpp_tests(row, path, line)
    task_id = f"{dataset}/{number}"  # `AssetSpec.numbered_tasks`
    task = Task(
        mbpp_split(number, seed),
        task_id,
        *_fields(_mbpp_prompt(row, path, line, challenge_runs=True)),
        {
            "source": dataset,
            "has_tests": bool(tests),
            "language": "python3",
            "num_tests": len(tests) + len(challenge),
        },
    )
    code = _sample_text(required(row, "code", path, line), "code", reject)
    return [_dedupe(task, [(f"{task_id}#c0", text, True) for text in code])]


# --- HumanEval -------------------------------------------------------------------------


def _humaneval_prompt(row: dict[str, Any], path: Path, line: int) -> PromptParts:
    entry_point = non_empty_text(required(row, "entry_point", path, line), "entry_point")
    signature = normalize_newlines(non_empty_text(required(row, "prompt", path, line), "prompt"))
    return PromptParts(
        f"Complete the Python function `{entry_point}` so that it does what its "
        "docstring says. Respond with the body of the function only.",
        signature,
        f"The answer is judged by hidden unit tests (`check({entry_point})`) run on "
        "the completed function.\nWrite the solution in Python 3.",
    )


def _humaneval_tasks(
    dataset: str,
    row: dict[str, Any],
    path: Path,
    line: int,
    seed: int,
    codes: set[int],
    reject: Reject,
) -> list[Task]:
    task_id = non_empty_text(required(row, "task_id", path, line), "task_id")
    entry_point = non_empty_text(required(row, "entry_point", path, line), "entry_point")
    solution = _sample_text(
        required(row, "canonical_solution", path, line), "canonical_solution", reject
    )
    has_tests = bool(_optional(row, "test", str, "").strip())
    task = Task(
        "test",
        task_id,
        *_fields(_humaneval_prompt(row, path, line)),
        {
            "source": dataset,
            "has_tests": has_tests,
            "language": "python3",
            "entry_point": entry_point,
        },
    )
    return [_dedupe(task, [(f"{task_id}#c0", text, True) for text in solution])]


# How each upstream row schema (`AssetSpec.dataset_format`) becomes the tasks of a dataset
# (named by its first argument).
CONVERTERS: dict[
    assets.DatasetFormat,
    Callable[[str, dict[str, Any], Path, int, int, set[int], Reject], list[Task]],
] = {
    "deepmind-code-contests": _codecontests_tasks,
    "google-mbpp": _mbpp_tasks,
    "openai-humaneval": _humaneval_tasks,
}


# The prompt of a raw row for evaluation, by row schema: `(row, path, line, challenge_tests)`.
EVALUATION_PROMPTS: dict[
    assets.DatasetFormat, Callable[[dict[str, Any], Path, int, bool], PromptParts]
] = {
    "deepmind-code-contests": lambda row, path, line, _: _codecontests_prompt(
        row, path, line, "python3"
    ),
    "google-mbpp": _mbpp_prompt,
    "openai-humaneval": lambda row, path, line, _: _humaneval_prompt(row, path, line),
}


def evaluation_prompt(
    dataset: str, row: dict[str, Any], path: Path, line: int, *, challenge_tests: bool
) -> PromptParts:
    """The prompt a model is evaluated with on a raw row: its task's training prompt
    (CodeContests: in Python 3, the language the sandbox runs), whose notes name the tests
    that run (MBPP's challenge tests only with `challenge_tests`). A field of the wrong
    type raises `Rejected`."""
    return EVALUATION_PROMPTS[assets.dataset_format(dataset)](row, path, line, challenge_tests)
