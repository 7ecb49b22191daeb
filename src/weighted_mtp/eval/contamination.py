"""n-gram overlap between the training splits and the evaluation splits (GPT-3 style).

Every processed record contributes the parts of its text that belong to the problem: the
prompt's `### Instruction:` and `### Input:` sections and the response (the template's
preamble, the generated evaluation notes and the fixed lines of MBPP's input section are
shared by all records and would match everywhere). Texts are tokenised with the storage's
SentencePiece tokenizer (the one `wmtp data prepare` uses by default) or, when it is
absent, split on whitespace; the report says which. An evaluation task is contaminated
when any n-gram of its records (prompt or solutions) also occurs in a training record; the
report lists those tasks and the training records they share n-grams with.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weighted_mtp import assets, progress
from weighted_mtp.clock import utc_now
from weighted_mtp.errors import UsageError
from weighted_mtp.storage.atomic import write_json
from weighted_mtp.storage.jsonl import iter_jsonl
from weighted_mtp.storage.layout import DATASETS, META_MODEL, Layout

TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("validation", "test")
MAX_LISTED_RECORDS = 20  # training records listed per contaminated task
# Lines the benchmarks' prompts repeat for every task (MBPP's headings).
BOILERPLATE_LINES = frozenset().union(*(b.boilerplate_lines for b in assets.BENCHMARKS))
_SECTIONS = re.compile(
    r"### Instruction:\n(?P<instruction>.*?)\n\n"
    r"### Input:\n(?P<input>.*?)\n\n### Evaluation Notes:",
    re.DOTALL,
)


@dataclass
class Overlap:
    dataset: str
    split: str
    task_id: str
    sample_id: str
    shared_ngrams: int


@dataclass
class ContaminatedTask:
    task_id: str
    train_records: int = 0
    listed: list[Overlap] = field(default_factory=list)


@dataclass
class SplitContamination:
    dataset: str
    split: str
    tasks: int
    contaminated: list[ContaminatedTask]


@dataclass
class ContaminationReport:
    n: int
    tokenizer: str
    train_files: list[str]
    splits: list[SplitContamination]
    created_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [
            f"{s.dataset} {s.split}: {len(s.contaminated)} of {s.tasks} tasks share a "
            f"{self.n}-gram with training data"
            for s in self.splits
        ]


def problem_text(record: dict[str, Any]) -> str:
    """The record's own text: instruction, input and response (no template boilerplate)."""
    match = _SECTIONS.search(record["prompt"])
    parts = [match["instruction"], match["input"]] if match else [record["prompt"]]
    lines = "\n".join([*parts, record["response"]]).split("\n")
    return "\n".join(line for line in lines if line.strip() not in BOILERPLATE_LINES)


def tokenizer_for(layout: Layout) -> tuple[str, Callable[[str], list[Any]]]:
    """(description, tokenise) with the storage's SentencePiece model, else whitespace."""
    path = layout.model(META_MODEL).tokenizer_model
    if path.is_file():
        from weighted_mtp.models.tokenizer import load_sentencepiece

        sp = load_sentencepiece(path)
        return f"sentencepiece {path}", sp.encode
    return "whitespace (no tokenizer at " + str(path) + ")", str.split


def ngrams(tokens: list[Any], n: int) -> set[int]:
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for _line, record in iter_jsonl(path):
        yield record


def _split_files(layout: Layout, splits: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    found = []
    for dataset in DATASETS:
        for split in splits:
            path = layout.dataset(dataset).split(split)
            if path.is_file():
                found.append((dataset, split, path))
    return found


def find_contamination(layout: Layout, n: int = 13) -> ContaminationReport:
    """Index every evaluation record's n-grams, then stream the training records past it."""
    if n < 1:
        raise UsageError(f"--ngram must be at least 1, got {n}")
    evaluation = _split_files(layout, EVAL_SPLITS)
    training = _split_files(layout, TRAIN_SPLITS)
    if not evaluation or not training:
        raise UsageError(
            "contamination needs prepared training and evaluation splits",
            path=layout.datasets_dir,
            hint="run `wmtp data prepare NAME` first",
        )
    description, tokenize = tokenizer_for(layout)
    index: dict[int, set[tuple[str, str, str]]] = defaultdict(set)  # n-gram -> eval tasks
    tasks: dict[tuple[str, str], set[str]] = defaultdict(set)
    for dataset, split, path in evaluation:
        for record in _records(path):
            task_id = record["metadata"]["task_id"]
            tasks[(dataset, split)].add(task_id)
            for gram in ngrams(tokenize(problem_text(record)), n):
                index[gram].add((dataset, split, task_id))
    found: dict[tuple[str, str, str], ContaminatedTask] = {}
    with progress.task("comparing training records", None, "records") as advance:
        for dataset, split, path in training:
            for record in _records(path):
                shared: dict[tuple[str, str, str], int] = defaultdict(int)
                for gram in ngrams(tokenize(problem_text(record)), n):
                    for key in index.get(gram, ()):
                        shared[key] += 1
                for key, count in shared.items():
                    task = found.setdefault(key, ContaminatedTask(key[2]))
                    task.train_records += 1
                    if len(task.listed) < MAX_LISTED_RECORDS:
                        meta = record["metadata"]
                        task.listed.append(
                            Overlap(dataset, split, meta["task_id"], meta["sample_id"], count)
                        )
                advance(1)
    splits = [
        SplitContamination(
            dataset,
            split,
            len(tasks[(dataset, split)]),
            sorted(
                (t for k, t in found.items() if k[:2] == (dataset, split)),
                key=lambda t: t.task_id,
            ),
        )
        for dataset, split, _path in evaluation
    ]
    report = ContaminationReport(n, description, [str(p) for *_, p in training], splits)
    write_json(contamination_path(layout), report.to_dict())
    return report


def contamination_path(layout: Layout) -> Path:
    return layout.report("contamination.json")
