"""Contamination: n-gram overlap found exactly where it was planted, never from the
template's boilerplate, with whitespace or SentencePiece tokens."""

from __future__ import annotations

import json
import shutil

import pytest

from weighted_mtp.assets.prompt_template import render_prompt
from weighted_mtp.errors import UsageError
from weighted_mtp.eval.contamination import contamination_path, find_contamination, ngrams

NOTES = (
    "The answer is judged by running the 3 assert statements above.\n"
    "Write the solution in Python 3."
)
LEAKED = (
    "def rotate_matrix(grid):\n"
    "    return [list(row) for row in zip(*grid[::-1])]  # clockwise quarter turn"
)


def record(task_id: str, sample_id: str, instruction: str, response: str) -> dict:
    return {
        "prompt": render_prompt(
            instruction, f"Your code should pass these tests:\nassert {task_id!r}", NOTES
        ),
        "response": response,
        "metadata": {"task_id": task_id, "sample_id": sample_id, "source": "mbpp"},
    }


def write_split(layout, dataset: str, split: str, records: list[dict]) -> None:
    path = layout.dataset(dataset).split(split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def planted(layout):
    write_split(
        layout,
        "mbpp",
        "test",
        [
            record("mbpp/11", "mbpp/11#c0", "Rotate a square matrix.", LEAKED),
            record(
                "mbpp/12",
                "mbpp/12#c0",
                "Count vowels in a word.",
                "def vowels(w):\n    return sum(c in 'aeiou' for c in w)",
            ),
        ],
    )
    write_split(
        layout,
        "mbpp",
        "train",
        [
            record(
                "mbpp/700",
                "mbpp/700#c0",
                "Something else entirely.",
                "x = 1\n" + LEAKED + "\nprint(x)",
            ),
            record(
                "mbpp/701", "mbpp/701#c0", "Add two numbers.", "def add(a, b):\n    return a + b"
            ),
        ],
    )
    return layout


def test_planted_overlap_is_found_and_boilerplate_is_not(planted) -> None:
    report = find_contamination(planted, n=8)
    assert report.tokenizer.startswith("whitespace")
    (split,) = report.splits
    assert (split.dataset, split.split, split.tasks) == ("mbpp", "test", 2)
    (task,) = split.contaminated  # mbpp/12 shares only the template with training data
    assert task.task_id == "mbpp/11" and task.train_records == 1
    (overlap,) = task.listed
    assert (overlap.task_id, overlap.sample_id) == ("mbpp/700", "mbpp/700#c0")
    leaked_words = len(LEAKED.split())
    assert overlap.shared_ngrams == leaked_words - 8 + 1
    written = json.loads(contamination_path(planted).read_text())
    assert written["splits"][0]["contaminated"][0]["task_id"] == "mbpp/11"


def test_longer_n_than_the_leak_finds_nothing(planted) -> None:
    report = find_contamination(planted, n=len(LEAKED.split()) + 3)
    assert report.splits[0].contaminated == []


def test_sentencepiece_tokens_when_the_storage_has_the_tokenizer(planted, sp_model_path) -> None:
    target = planted.model("meta-llama-mtp").tokenizer_model
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sp_model_path, target)
    report = find_contamination(planted, n=13)
    assert report.tokenizer.startswith("sentencepiece")
    assert [t.task_id for t in report.splits[0].contaminated] == ["mbpp/11"]


def test_needs_prepared_splits(layout) -> None:
    with pytest.raises(UsageError, match="prepared training and evaluation splits"):
        find_contamination(layout)


def test_ngrams() -> None:
    assert len(ngrams(list("abcde"), 3)) == 3
    assert ngrams(list("ab"), 3) == set()
