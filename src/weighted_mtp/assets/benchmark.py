"""The protocol a benchmark module provides, and the plain data it hands out.

A benchmark is one module in `weighted_mtp.assets.benchmarks` that defines `BENCHMARK`, an
instance of a `Benchmark` subclass. It says everything wmtp knows about the dataset of the
same name (its upstream files are the catalog row of that name):

- facts: `name` (the dataset asset and catalog key), `order` (its place in listings),
  `splits` and `eval_split` (what `wmtp eval` reads), `stop_sequences` (where a completion
  ends), `numbered_tasks` (upstream ids are integers, named `<name>/<n>`), `raw_file` (the
  one raw JSONL file, or None: one file per upstream split), the disk-estimate factors,
  `extra_tests` (test choices beyond `base`, each with what it adds) and
  `boilerplate_lines` (lines every prompt repeats, which the contamination check skips);
- `training_tasks(row, path, line, context)`: a raw row as training tasks with samples;
- `prompt(row, path, line, tests)`: the evaluation prompt of a raw row;
- `problem(row, path, line)`: the evaluation problem of a raw row, with its tests for every
  test choice (`Problem.tests`);
- `row_split(row, path, line, file_split)`: the evaluation split a raw row belongs to;
- `write_mirror(out_dir, open_binary)`: the demo's synthetic upstream files (rows in the
  upstream schema, at the paths the catalog row names), each written through
  `open_binary` (the caller's atomic writer).

Generic machinery (reading raw files, rejection counts, text limits, tokenizing, the sandbox,
scoring) lives in `data` and `eval` and calls these. A benchmark module imports only the
standard library and base modules (`weighted_mtp.assets.*`, `weighted_mtp.errors`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.assets.rows import normalize_newlines
from weighted_mtp.errors import UsageError

# Which tests judge a sample: `BASE_TESTS` (the benchmark's standard tests) for every
# benchmark, or one of the extra choices a benchmark declares (`Benchmark.extra_tests`).
TestChoice = str
BASE_TESTS: TestChoice = "base"
# Tests reported beside the base ones on every evaluation (EvalPlus's "plus" tests): a
# problem that has them under this key is judged by them too, on each sample that passed its
# base tests, and a sample passes "plus" when it passes both (`eval.scoring`). Not a test
# choice: a benchmark that has them lists it in no `extra_tests`.
PLUS_TESTS: TestChoice = "plus"

# Programming languages by CodeContests' numbering (contest_problem.proto), the vocabulary
# of `wmtp data prepare --languages` (names or these numbers).
LANGUAGE_CODES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
DEFAULT_LANGUAGES = ("python3",)

# Completions that continue a function end at a new top-level statement (Codex's stops).
FUNCTION_STOPS = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")


def language_codes(languages: list[str] | tuple[str, ...] | None) -> frozenset[int]:
    """Language codes for names like `python3` (or the numbers themselves)."""
    by_name = {name: code for code, name in LANGUAGE_CODES.items()}
    codes = set()
    for language in languages or DEFAULT_LANGUAGES:
        key = str(language).strip().lower()
        if key.isdigit() and int(key) in LANGUAGE_CODES:
            codes.add(int(key))
        elif key in by_name:
            codes.add(by_name[key])
        else:
            raise UsageError(
                f"unknown language {language!r}", hint=f"choose from: {', '.join(by_name)}"
            )
    return frozenset(codes)


# --- training tasks --------------------------------------------------------------------

Reject = Callable[[str], None]  # records a rejected sample of the row being converted


@dataclass
class Sample:
    sample_id: str
    response: str
    is_correct: bool


@dataclass
class Task:
    """One problem of a training dataset: its prompt parts and its samples (which share the
    prompt, so it is tokenized once)."""

    split: str
    task_id: str
    instruction: str
    input_text: str
    notes: str
    metadata: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    duplicates: int = 0

    @classmethod
    def of(cls, split: str, task_id: str, prompt: PromptParts, metadata: dict[str, Any]) -> Task:
        return cls(split, task_id, prompt.instruction, prompt.input_text, prompt.notes, metadata)

    @property
    def prompt(self) -> PromptParts:
        return PromptParts(self.instruction, self.input_text, self.notes)

    def add_samples(self, candidates: Iterable[tuple[str, str, bool]]) -> Task:
        """Add `(sample_id, code, is_correct)` samples (newlines normalised), leaving out
        blank code and keeping a solution that appears twice for the task once."""
        seen = {sample.response for sample in self.samples}
        for sample_id, code, is_correct in candidates:
            code = normalize_newlines(code)
            if not code.strip():
                continue
            if code in seen:
                self.duplicates += 1
                continue
            seen.add(code)
            self.samples.append(Sample(sample_id, code, is_correct))
        return self


@dataclass(frozen=True)
class TaskContext:
    """What turning a row into training tasks may depend on besides the row: the split seed,
    the chosen languages (`LANGUAGE_CODES`), and where a rejected sample is recorded."""

    seed: int
    languages: frozenset[int]
    reject: Reject


# --- evaluation problems ---------------------------------------------------------------


@dataclass(frozen=True)
class FunctionTests:
    """Tests that judge a program in the benchmark's own namespace: the judge runs
    `program` (asserts, a `check(...)` call) after the sample, taking `entry_points` (and
    nothing else of the sample's that shadows a built-in or module) from the sample, within
    `time_limit` seconds for the whole (None: the sandbox's timeout)."""

    program: str
    entry_points: tuple[str, ...] = ()
    time_limit: float | None = None


@dataclass(frozen=True)
class StdioTests:
    """Tests that run a whole program: each case is (stdin, expected stdout), under a time
    limit in seconds and an address-space limit in bytes (None: the sandbox's default)."""

    cases: tuple[tuple[str, str], ...]
    time_limit: float
    memory_bytes: int | None = None


Tests = FunctionTests | StdioTests


@dataclass(frozen=True)
class Problem:
    """One evaluation problem, as plain data: the code a completion continues (`prompt`; ""
    where the completion is a whole program) and its tests for each test choice the
    benchmark has (`tests["base"]` always)."""

    dataset: str
    task_id: str
    prompt: str
    tests: Mapping[TestChoice, Tests]


# Opens a file for writing bytes, atomically: what `write_mirror` writes through.
OpenBinary = Callable[[Path], AbstractContextManager[BinaryIO]]


_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # a task number as JSON would write it


# --- the protocol ----------------------------------------------------------------------


class Benchmark(ABC):
    """What a benchmark module provides (see the module docstring); subclass it, set the
    facts as class attributes, implement the methods, and bind an instance to `BENCHMARK`."""

    name: str  # the dataset asset's name and its catalog key
    order: int = 100  # listings sort by (order, name)
    splits: tuple[str, ...] = ("test",)  # the evaluation splits
    eval_split: str = "test"  # what `wmtp eval run` reads by default
    stop_sequences: tuple[str, ...] = ()  # where an evaluation completion ends
    numbered_tasks: bool = False  # upstream task ids are integers, prepared as `<name>/<n>`
    raw_file: str | None = None  # the one raw JSONL file's name (no .jsonl); None: per split
    # Disk estimates before a download (docs/datasets.md, "Disk space"): raw JSONL bytes per
    # upstream Parquet byte (None: the generic factor), and prepare's outputs per JSONL byte.
    jsonl_per_parquet: float | None = None
    prepared_per_jsonl: float = 1.5
    # Test choices beyond BASE_TESTS, each with what it adds ("challenge tests").
    extra_tests: Mapping[TestChoice, str] = MappingProxyType({})
    # Lines its prompts repeat for every task (headings): no evidence of contamination.
    boilerplate_lines: frozenset[str] = frozenset()

    @property
    def test_choices(self) -> tuple[TestChoice, ...]:
        return (BASE_TESTS, *self.extra_tests)

    def task_id(self, task_id: Any) -> str:
        """A task id (a raw row's, or a sample's) as the benchmark names the task. Numbered
        tasks: the number (`11`, or its plain ASCII decimal text `"11"`) becomes
        `<name>/11`; anything else (`"011"`, `"١"`, `"²"`, `true`, `"mbpp/11"`) is kept as
        given (as text) and matches no task unless it is already such a name."""
        decimal = type(task_id) is int or (isinstance(task_id, str) and _DECIMAL.fullmatch(task_id))
        if self.numbered_tasks and decimal:
            return f"{self.name}/{task_id}"
        return task_id if isinstance(task_id, str) else repr(task_id)

    @abstractmethod
    def training_tasks(
        self, row: dict[str, Any], path: Path, line: int, context: TaskContext
    ) -> list[Task]:
        """The training tasks of a raw row, with their samples (a row may give one task per
        language, or none). A field of the wrong type raises `rows.Rejected`."""

    @abstractmethod
    def prompt(self, row: dict[str, Any], path: Path, line: int, tests: TestChoice) -> PromptParts:
        """The prompt a model is evaluated with on a raw row, whose notes name the tests
        that run under `tests`."""

    @abstractmethod
    def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
        """The evaluation problem of a raw row, with tests for every `test_choices`."""

    def row_split(self, row: dict[str, Any], path: Path, line: int, file_split: str) -> str | None:
        """The evaluation split of a raw row read from the raw file of `file_split` (None:
        in none of the splits). By default: that file's split."""
        return file_split

    @abstractmethod
    def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
        """Write the demo's synthetic upstream files under `out_dir` (rows in the upstream
        schema, at the paths the catalog row names), each through `open_binary`; returns
        `out_dir`."""
