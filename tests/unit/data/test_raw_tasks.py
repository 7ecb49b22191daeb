from pathlib import Path

import pytest

from weighted_mtp.assets.benchmark import language_codes
from weighted_mtp.assets.benchmarks.codecontests import split_description
from weighted_mtp.data.raw_tasks import iter_tasks, raw_parts
from weighted_mtp.errors import UsageError, WmtpError


def test_description_split_keeps_io_section_and_examples():
    statement, io = split_description(
        "Story.\r\n\r\nInput\r\n\r\nTwo ints.\r\n\r\nOutput\r\n\r\n"
        "One int.\r\n\r\nExamples\r\n\r\nInput\r\n\r\n1 2\r\n"
    )
    assert statement == "Story.\n\n"
    assert io.startswith("Input\n\nTwo ints.") and io.endswith("Examples\n\nInput\n\n1 2\n")
    assert split_description("No sections here.") == ("No sections here.", "")


def test_language_names_and_codes():
    assert language_codes(None) == {3}
    assert language_codes(["python3", "CPP", "4"]) == {2, 3, 4}
    with pytest.raises(UsageError, match="unknown language 'rust'"):
        language_codes(["rust"])


def test_raw_parts_read_evaluation_splits_first(tmp_path: Path):
    for name in ("train", "test", "validation", "extra"):
        (tmp_path / f"{name}.jsonl").write_text("{}\n")
    assert [p.stem for p in raw_parts(tmp_path)] == ["validation", "test", "train", "extra"]
    with pytest.raises(WmtpError, match="no raw JSONL files"):
        raw_parts(tmp_path / "nothing")


def test_codecontests_python3_only_deduplicated_with_incorrect(downloaded):
    tasks = list(iter_tasks("codecontests", downloaded.dataset("codecontests").raw, seed=42))
    assert {t.metadata["language"] for t in tasks} == {"python3"}
    samples = [s for t in tasks for s in t.samples]
    assert any(s.is_correct for s in samples) and any(not s.is_correct for s in samples)
    assert sum(t.duplicates for t in tasks) > 0
    for task in tasks:
        responses = [s.response for s in task.samples]
        assert len(responses) == len(set(responses))
        assert all("#python3-" in s.sample_id for s in task.samples)
    assert {t.split for t in tasks} == {"train", "validation", "test"}


def test_codecontests_other_languages_on_request(downloaded):
    raw = downloaded.dataset("codecontests").raw
    tasks = list(iter_tasks("codecontests", raw, seed=42, languages=["cpp", "java"]))
    assert {t.metadata["language"] for t in tasks} == {"cpp", "java"}
    assert "Write the solution in C++." in next(
        t.notes for t in tasks if t.metadata["language"] == "cpp"
    )


def test_mbpp_official_split_and_crlf(downloaded):
    tasks = {t.task_id: t for t in iter_tasks("mbpp", downloaded.dataset("mbpp").raw, seed=1)}
    assert tasks["mbpp/1"].split == "train" and tasks["mbpp/974"].split == "train"
    assert {t.split for t in tasks.values()} == {"train", "validation", "test"}
    assert all("\r" not in t.samples[0].response for t in tasks.values())
    assert "assert add_1(" in tasks["mbpp/1"].input_text


def test_humaneval_keeps_signature_and_canonical_solution(downloaded):
    import gzip
    import json

    from weighted_mtp.assets.benchmarks.humaneval import humaneval_source

    with gzip.open(humaneval_source(), "rt") as handle:
        first = json.loads(handle.readline())
    tasks = list(iter_tasks("humaneval", downloaded.dataset("humaneval").raw, seed=0))
    assert len(tasks) == 164 and {t.split for t in tasks} == {"test"}
    assert tasks[0].task_id == first["task_id"] == "HumanEval/0"
    assert tasks[0].input_text == first["prompt"]
    assert tasks[0].samples[0].response == first["canonical_solution"]


def test_missing_field_names_file_and_line(tmp_path: Path):
    (tmp_path / "mbpp.jsonl").write_text('{"task_id": 5, "text": "t", "test_list": []}\n')
    with pytest.raises(WmtpError, match="line 1: missing field 'code'") as exc:
        list(iter_tasks("mbpp", tmp_path, seed=0))
    assert "mbpp.jsonl" in exc.value.line()


def test_wrongly_typed_value_names_file_and_line(tmp_path: Path):
    (tmp_path / "mbpp.jsonl").write_text(
        '{"task_id": 5, "text": "t", "code": "x", "test_list": null}\n'
    )
    with pytest.raises(WmtpError, match="line 1: test_list is null") as exc:
        list(iter_tasks("mbpp", tmp_path, seed=0))
    assert "mbpp.jsonl" in exc.value.line()


def test_empty_raw_file_is_an_error(tmp_path: Path):
    (tmp_path / "HumanEval.jsonl").write_text("")
    with pytest.raises(WmtpError, match="file is empty"):
        list(iter_tasks("humaneval", tmp_path, seed=0))


def test_a_task_twice_is_an_error(downloaded):
    raw = downloaded.dataset("mbpp").raw_split("mbpp")
    first = raw.read_text().splitlines()[0]
    with raw.open("a") as handle:
        handle.write(first + "\n")
    with pytest.raises(WmtpError, match="task 'mbpp/1' appears a second time"):
        list(iter_tasks("mbpp", raw.parent, seed=0))
