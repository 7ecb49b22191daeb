"""Nulls and wrong types in upstream rows: dropped and counted with a reason, never text."""

import json
from pathlib import Path

import pytest

from weighted_mtp.data.raw_tasks import Rejections, iter_tasks
from weighted_mtp.errors import WmtpError

HUMANEVAL = {
    "task_id": "HumanEval/0",
    "prompt": "def f(x):\n    '''Return x.'''\n",
    "canonical_solution": "    return x\n",
    "test": "def check(f): assert f(1) == 1",
    "entry_point": "f",
}
MBPP = {
    "task_id": 11,
    "text": "Add one.",
    "code": "def f(x):\n    return x + 1",
    "test_list": ["assert f(1) == 2"],
    "test_setup_code": "",
    "challenge_test_list": [],
}


def _codecontests(index: int, **changes):
    row = {
        "name": f"{index}_A. Problem",
        "description": "Print the sum.\n\nInput\n\nTwo ints.\n",
        "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
        "private_tests": {"input": [], "output": []},
        "generated_tests": {"input": [], "output": []},
        "source": 2,
        "difficulty": 7,
        "solutions": {"language": [3, 3], "solution": ["print(1)", "print(2)"]},
        "incorrect_solutions": {"language": [3], "solution": ["print(0)"]},
        "cf_rating": 800,
        "cf_tags": ["math"],
        "time_limit": {"seconds": 2, "nanos": 0},
        "memory_limit_bytes": 256 << 20,
        "input_file": "",
        "output_file": "",
    }
    row.update(changes)
    return row


def _write(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _tasks(dataset, folder, **kwargs):
    rejections = Rejections()
    tasks = list(iter_tasks(dataset, folder, seed=0, rejections=rejections, **kwargs))
    return tasks, rejections


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("prompt", None, "prompt is null"),
        ("entry_point", None, "entry_point is null"),
        ("task_id", 7, "task_id is an integer, not a string"),
        ("prompt", "None", "prompt is the text of a null"),
        ("prompt", "   \n", "prompt is empty"),
        ("entry_point", ["f"], "entry_point is an array, not a string"),
        ("test", 5, "test is an integer, not a string"),
    ],
)
def test_humaneval_rows_with_wrong_types_are_rejected(tmp_path, field, value, reason):
    rows = [{**HUMANEVAL, "task_id": "HumanEval/1"}, {**HUMANEVAL, field: value}]
    tasks, rejections = _tasks("humaneval", _write(tmp_path, "HumanEval.jsonl", rows))
    assert [t.task_id for t in tasks] == ["HumanEval/1"]
    assert rejections.rows == {reason: {"count": 1, "first": "HumanEval.jsonl line 2"}}
    assert all("None" not in s.response for t in tasks for s in t.samples)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "canonical_solution is null"),
        ("None", "canonical_solution is the text of a null"),
        ("", "canonical_solution is empty"),
        (3, "canonical_solution is an integer, not a string"),
    ],
)
def test_a_solution_that_is_no_text_is_a_rejected_sample(tmp_path, value, reason):
    rows = [HUMANEVAL, {**HUMANEVAL, "task_id": "HumanEval/1", "canonical_solution": value}]
    tasks, rejections = _tasks("humaneval", _write(tmp_path, "HumanEval.jsonl", rows))
    samples = {t.task_id: [s.response for s in t.samples] for t in tasks}
    assert samples == {"HumanEval/0": ["    return x\n"], "HumanEval/1": []}
    assert rejections.samples == {reason: {"count": 1, "first": "HumanEval.jsonl line 2"}}


@pytest.mark.parametrize(
    ("changes", "kind", "reason"),
    [
        ({"text": None}, "rows", "text is null"),
        ({"task_id": "11"}, "rows", "task_id is a string, not an integer"),
        ({"task_id": True}, "rows", "task_id is a boolean, not an integer"),
        ({"test_list": None}, "rows", "test_list is null"),
        ({"test_list": ["ok", None]}, "rows", "an item of test_list is null"),
        ({"test_setup_code": 1}, "rows", "test_setup_code is an integer, not a string"),
        ({"code": None}, "samples", "code is null"),
    ],
)
def test_mbpp_rows_and_samples_with_wrong_types(tmp_path, changes, kind, reason):
    rows = [{**MBPP, "task_id": 12}, {**MBPP, **changes}]
    tasks, rejections = _tasks("mbpp", _write(tmp_path, "mbpp.jsonl", rows))
    assert getattr(rejections, kind) == {reason: {"count": 1, "first": "mbpp.jsonl line 2"}}
    assert "mbpp/12" in {t.task_id for t in tasks}
    assert all(s.response.strip() not in ("None", "") for t in tasks for s in t.samples)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"name": None}, "name is null"),
        ({"description": None}, "description is null"),
        ({"solutions": None}, "solutions is null"),
        ({"incorrect_solutions": "x"}, "incorrect_solutions is a string, not an object"),
        ({"public_tests": None}, "public_tests is null"),
        ({"difficulty": "hard"}, "difficulty is a string, not an integer"),
        ({"difficulty": 1.5}, "difficulty is a number, not an integer"),
        ({"cf_tags": [1]}, "an item of cf_tags is an integer, not a string"),
        ({"time_limit": {"seconds": "2"}}, "time_limit.seconds is a string, not an integer"),
        (
            {"solutions": {"language": [3], "solution": []}},
            "solutions has unequal numbers of languages and solutions",
        ),
    ],
)
def test_codecontests_rows_with_wrong_types_are_rejected(tmp_path, changes, reason):
    rows = [_codecontests(1), _codecontests(2, **changes)]
    tasks, rejections = _tasks("codecontests", _write(tmp_path, "train.jsonl", rows))
    assert [t.task_id for t in tasks] == ["1_A. Problem"]
    assert rejections.rows == {reason: {"count": 1, "first": "train.jsonl line 2"}}


def test_null_solutions_are_rejected_samples_not_the_others(tmp_path):
    solutions = {"language": [3, 3, 2, 3], "solution": ["print(1)", None, None, 5]}
    rows = [_codecontests(1, solutions=solutions)]
    tasks, rejections = _tasks("codecontests", _write(tmp_path, "train.jsonl", rows))
    assert [(s.response, s.is_correct) for s in tasks[0].samples] == [
        ("print(1)", True),
        ("print(0)", False),
    ]
    assert rejections.samples == {  # the C++ null is not a candidate for python3
        "a solutions.solution is null": {"count": 1, "first": "train.jsonl line 1"},
        "a solutions.solution is an integer, not a string": {
            "count": 1,
            "first": "train.jsonl line 1",
        },
    }


def test_optional_fields_may_be_null(tmp_path):
    row = _codecontests(1, time_limit=None, memory_limit_bytes=None, cf_tags=None, difficulty=None)
    tasks, rejections = _tasks("codecontests", _write(tmp_path, "train.jsonl", [row]))
    assert tasks[0].metadata["difficulty"] == 0 and tasks[0].metadata["cf_tags"] == []
    assert not rejections.rows and not rejections.samples


@pytest.mark.parametrize(
    ("dataset", "name", "rows"),
    [
        ("humaneval", "HumanEval.jsonl", [{**HUMANEVAL, "prompt": None}] * 3),
        ("mbpp", "mbpp.jsonl", [{**MBPP, "task_id": i, "code": None} for i in (11, 12)]),
        ("codecontests", "test.jsonl", [_codecontests(i, solutions=None) for i in range(3)]),
    ],
)
def test_a_file_that_is_wrong_throughout_is_one_error(tmp_path, dataset, name, rows):
    with pytest.raises(WmtpError, match="no usable sample: every row or solution") as exc:
        _tasks(dataset, _write(tmp_path, name, rows))
    assert name in exc.value.line() and "first: line 1:" in exc.value.line()


def test_texts_beyond_the_limit_are_rejected_before_tokenizing(tmp_path, monkeypatch):
    monkeypatch.setenv("WMTP_MAX_TEXT_CHARS", "2000")
    rows = [
        {**MBPP, "task_id": 11, "code": "x = 1\n" * 400},
        {**MBPP, "task_id": 12, "text": "word " * 500},
        {**MBPP, "task_id": 13},
    ]
    tasks, rejections = _tasks("mbpp", _write(tmp_path, "mbpp.jsonl", rows))
    assert {t.task_id: len(t.samples) for t in tasks} == {"mbpp/11": 0, "mbpp/13": 1}
    assert rejections.samples == {
        "response over 2,000 characters": {"count": 1, "first": "mbpp.jsonl line 1"}
    }
    assert rejections.rows == {
        "prompt over 2,000 characters": {"count": 1, "first": "mbpp.jsonl line 2"}
    }
