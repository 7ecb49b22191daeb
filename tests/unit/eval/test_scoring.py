"""Scoring: samples files are checked line by line before anything runs, problems come from
the raw records, and results + summary land next to the samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.scoring import (
    parse_ks,
    result_line,
    results_path,
    score_samples,
    summary_path,
)
from weighted_mtp.eval.tasks import load_problems


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def sample(task_id, completion, **extra) -> str:
    return json.dumps({"task_id": task_id, "completion": completion, **extra})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([sample("HumanEval/0", "    pass"), "{not json"], "line 2 is not valid JSON"),
        ([json.dumps({"task_id": "HumanEval/0"})], "line 1: missing field 'completion'"),
        ([json.dumps({"completion": "x"})], "line 1: missing field 'task_id'"),
        ([sample("HumanEval/0", 3)], "line 1: 'completion' is not a string"),
        (["", sample("HumanEval/999", "    pass")], "line 2: unknown task id 'HumanEval/999'"),
        ([sample("HumanEval/1", "a"), sample("HumanEval/1", "a")], "line 2: duplicate of line 1"),
        (
            [sample("HumanEval/1", "a", sample_id=0), sample("HumanEval/1", "b", sample_id=0)],
            "line 2: duplicate of line 1",
        ),
        (["[1, 2]"], "line 1 is a JSON list, not an object"),
    ],
)
def test_bad_samples_name_file_and_line_and_score_nothing(eval_layout, tmp_path, lines, message):
    path = write_lines(tmp_path / "samples.jsonl", lines)
    with pytest.raises(WmtpError) as caught:
        score_samples(eval_layout, "humaneval", path)
    assert message in caught.value.line()
    assert str(path) in caught.value.line()
    assert not results_path(path).exists() and not summary_path(path).exists()


def test_repeated_completions_with_distinct_sample_ids_are_separate_samples(eval_layout, tmp_path):
    canonical = load_problems(eval_layout, "humaneval", only={"HumanEval/2"})
    body = "    return number % 1.0\n"
    assert "HumanEval/2" in canonical
    path = write_lines(
        tmp_path / "s.jsonl",
        [sample("HumanEval/2", body, sample_id=i) for i in range(3)]
        + [sample("HumanEval/2", "    return 0.5\n", sample_id=3)],
    )
    summary = score_samples(eval_layout, "humaneval", path, ks=(1, 2, 4, 5))
    assert summary.results == {"passed": 3, "failed": 1, "timed out": 0, "error": 0}
    assert summary.pass_at_k == {"pass@1": 0.75, "pass@2": 1.0, "pass@4": 1.0, "pass@5": None}
    rows = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, True, False]
    assert rows[0]["sample_id"] == 0 and rows[3]["result"] == "failed"
    written = json.loads(summary_path(path).read_text())
    assert written["pass_at_k"]["pass@1"] == 0.75 and written["n_tasks"] == 1


def test_mbpp_reference_code_passes_and_bare_task_numbers_work(eval_layout, tmp_path):
    raw = eval_layout.dataset("mbpp").raw / "mbpp.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    lines = [sample(row["task_id"], row["code"]) for row in rows]  # bare ints, CRLF code
    lines.append(sample(f"mbpp/{rows[0]['task_id']}", "def nothing():\n    pass\n"))
    summary = score_samples(eval_layout, "mbpp", write_lines(tmp_path / "m.jsonl", lines), ks=(1,))
    assert summary.results["passed"] == len(rows)
    assert summary.results["error"] == 1  # the wrong program: NameError in the asserts


def test_codecontests_programs_run_on_public_private_and_generated_tests(eval_layout, tmp_path):
    problems = load_problems(eval_layout, "codecontests", "test")
    task_id, problem = next((t, p) for t, p in problems.items() if len(p.tests) > 1)
    assert problem.time_limit == 2.0 and problem.memory_bytes > 256 << 20
    right = "a, b = map(int, input().split())\nprint(a + b)\n"
    wrong = "a, b = map(int, input().split())\nprint(a + b if a < 0 else a)\n"
    path = write_lines(
        tmp_path / "c.jsonl",
        [sample(task_id, right, sample_id=0), sample(task_id, wrong, sample_id=1)],
    )
    summary = score_samples(eval_layout, "codecontests", path, ks=(1,))
    assert summary.results["passed"] == 1 and summary.results["failed"] == 1
    assert summary.pass_at_k["pass@1"] == 0.5


def test_codecontests_tasks_of_another_split_are_unknown(eval_layout, tmp_path):
    train = next(iter(load_problems(eval_layout, "codecontests", "train")))
    path = write_lines(tmp_path / "c.jsonl", [sample(train, "print(1)")])
    with pytest.raises(WmtpError, match="line 1: unknown task id"):
        score_samples(eval_layout, "codecontests", path)


def test_parse_ks() -> None:
    assert parse_ks("100,1,10") == (1, 10, 100)
    for bad in ("", "0", "a,b", "1,-2"):
        with pytest.raises(UsageError):
            parse_ks(bad)


def test_humaneval_job_is_the_harness_check_program_split_at_the_completion(eval_layout) -> None:
    """The sample runs prompt + completion; the judge runs the prompt's helpers, then the
    harness's `test + check(entry_point)` with the sample's entry point."""
    problem = load_problems(eval_layout, "humaneval", only={"HumanEval/0"})["HumanEval/0"]
    job = problem.job("    return True\n")
    assert job.program == problem.prompt + "    return True\n"
    assert job.prelude == problem.prompt
    assert job.test.rstrip().endswith("check(has_close_elements)")
    assert job.entry_points == ("has_close_elements",)
    assert job.tests is None


def test_a_results_row_is_utf8_whatever_text_it_holds():
    plain = {"completion": "é\x00", "reason": "ok"}
    assert json.loads(result_line(plain)) == plain
    assert "é".encode() in result_line(plain)  # readable where it can be
    lone = {"completion": "x = '\ud800'", "reason": "ValueError: \udfff"}
    line = result_line(lone)
    line.decode("utf-8")
    assert json.loads(line) == lone  # the surrogates survive as \u escapes


def test_every_sample_gets_a_row_even_with_unencodable_text(eval_layout, tmp_path):
    """A completion holding a lone surrogate (valid JSON, invalid UTF-8) is that sample's
    error, and its row is written like every other."""
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            sample("HumanEval/2", "    return '\ud800'\n", sample_id=0),
            sample("HumanEval/2", "    return number % 1.0\n", sample_id=1),
        ],
    )
    summary = score_samples(eval_layout, "humaneval", path, ks=(1,))
    assert summary.results["passed"] == 1 and summary.results["error"] == 1
    rows = [json.loads(line) for line in results_path(path).read_bytes().decode().splitlines()]
    assert rows[0]["completion"] == "    return '\ud800'\n" and rows[0]["result"] == "error"
    assert summary.sandbox["separate_judge"] is True
