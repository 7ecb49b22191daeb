"""Preparation counts rejected rows and samples in its summary; validation refuses records
whose sections say nothing."""

import json

import pytest

from weighted_mtp.data.prepare import prepare_into
from weighted_mtp.data.validate import validate_dataset

MBPP = {"text": "Add one.", "test_list": ["assert f(1) == 2"]}


def _rows():
    for task_id in range(1, 40):
        yield {**MBPP, "task_id": task_id, "code": f"def f(x):\n    return x + {task_id}"}
    yield {**MBPP, "task_id": 700, "code": None}
    yield {**MBPP, "task_id": 701, "code": "None"}
    yield {**MBPP, "task_id": 702, "text": None, "code": "pass"}


@pytest.fixture
def mbpp_prepared(layout, sp_model_path):
    paths = layout.dataset("mbpp")
    paths.raw_split("mbpp").write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    summary = prepare_into(paths, paths.raw, sp_model_path)
    return layout, summary


def test_the_summary_counts_rejections_with_reasons(mbpp_prepared):
    layout, summary = mbpp_prepared
    assert summary["rejected"] == {
        "rows": {"text is null": {"count": 1, "first": "mbpp.jsonl line 42"}},
        "samples": {
            "code is null": {"count": 1, "first": "mbpp.jsonl line 40"},
            "code is the text of a null": {"count": 1, "first": "mbpp.jsonl line 41"},
        },
    }
    records = [
        json.loads(line)
        for split in ("train", "validation", "test")
        if layout.dataset("mbpp").split(split).is_file()
        for line in layout.dataset("mbpp").split(split).read_text().splitlines()
    ]
    assert len(records) == 39
    assert all(r["response"] != "None" and "None" not in r["prompt"] for r in records)


@pytest.mark.parametrize(
    ("section", "text", "named"),
    [
        ("response", "None", "response"),
        ("response", "null\n", "response"),
        ("instruction", "None", "instruction"),
        ("input", "  ", "input"),
        ("notes", "null", "notes"),
    ],
)
def test_validate_refuses_sections_that_say_nothing(mbpp_prepared, section, text, named):
    layout, _summary = mbpp_prepared
    path = layout.dataset("mbpp").split("test")
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    if section == "response":
        record["response"] = text
    else:
        heading = {"instruction": "Instruction", "input": "Input", "notes": "Evaluation Notes"}
        head, rest = record["prompt"].split(f"### {heading[section]}:\n", 1)
        record["prompt"] = (
            f"{head}### {heading[section]}:\n{text}\n\n###" + rest.split("\n\n###", 1)[1]
        )
    lines[0] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    report = validate_dataset(layout, "mbpp")
    check = next(c for c in report.checks if c.name == "records match schema.json")
    assert not check.ok
    assert f"test.jsonl line 1: empty or null-text section(s): {named}" in check.detail


def test_validate_refuses_texts_beyond_the_limit(mbpp_prepared, monkeypatch):
    layout, _summary = mbpp_prepared
    assert validate_dataset(layout, "mbpp").ok
    monkeypatch.setenv("WMTP_MAX_TEXT_CHARS", "100")
    report = validate_dataset(layout, "mbpp")
    check = next(c for c in report.checks if c.name == "records match schema.json")
    assert "prompt is over 100 characters" in check.detail
