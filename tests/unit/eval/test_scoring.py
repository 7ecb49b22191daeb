"""Scoring: samples files are checked line by line before anything runs, problems come from
the raw records, and results + summary land next to the samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import load_problems
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.problems import problem_job
from weighted_mtp.eval.result_files import TaskCount
from weighted_mtp.eval.scoring import (
    parse_ks,
    result_line,
    results_path,
    score_samples,
    summary_path,
)


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
    summary = score_samples(eval_layout, "humaneval", path, ks=(1, 2, 4, 5), partial=True)
    assert summary.results == {"passed": 3, "failed": 1, "timed out": 0, "error": 0}
    assert summary.pass_at_k == {"pass@1": 0.75, "pass@2": 1.0, "pass@4": 1.0, "pass@5": None}
    rows = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, True, False]
    assert rows[0]["sample_id"] == 0 and rows[3]["result"] == "failed"
    written = json.loads(summary_path(path).read_text())
    assert written["pass_at_k"]["pass@1"] == 0.75 and written["n_tasks"] == 1


@pytest.mark.parametrize("split", ["prompt", "train", "validation", "test"])
def test_mbpp_reference_code_passes_in_each_official_split(eval_layout, tmp_path, split):
    from weighted_mtp.assets.benchmarks.mbpp import official_split as mbpp_official_split

    raw = eval_layout.dataset("mbpp").raw / "mbpp.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    rows = [row for row in rows if mbpp_official_split(row["task_id"]) == split]
    lines = [sample(row["task_id"], row["code"]) for row in rows]  # bare ints, CRLF code
    lines.append(sample(f"mbpp/{rows[0]['task_id']}", "def nothing():\n    pass\n"))
    path = write_lines(tmp_path / "m.jsonl", lines)
    summary = score_samples(eval_layout, "mbpp", path, ks=(1,), split=split)
    assert summary.n_tasks == summary.n_tasks_in_split == len(rows) and not summary.partial
    assert summary.results["passed"] == len(rows)
    assert summary.results["error"] == 1  # the wrong program: NameError in the asserts


def test_codecontests_programs_run_on_public_private_and_generated_tests(eval_layout, tmp_path):
    problems = load_problems(eval_layout, "codecontests", "test")
    task_id, problem = next((t, p) for t, p in problems.items() if len(p.tests["base"].cases) > 1)
    tests = problem.tests["base"]
    assert tests.time_limit == 2.0 and tests.memory_bytes > 256 << 20
    right = "a, b = map(int, input().split())\nprint(a + b)\n"
    wrong = "a, b = map(int, input().split())\nprint(a + b if a < 0 else a)\n"
    path = write_lines(
        tmp_path / "c.jsonl",
        [sample(task_id, right, sample_id=0), sample(task_id, wrong, sample_id=1)],
    )
    summary = score_samples(eval_layout, "codecontests", path, ks=(1,), partial=True)
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
    job = problem_job(problem, "base", "    return True\n")
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
    summary = score_samples(eval_layout, "humaneval", path, ks=(1,), partial=True)
    assert summary.results["passed"] == 1 and summary.results["error"] == 1
    rows = [json.loads(line) for line in results_path(path).read_bytes().decode().splitlines()]
    assert rows[0]["completion"] == "    return '\ud800'\n" and rows[0]["result"] == "error"
    assert summary.sandbox["separate_judge"] is True


def canonical_lines(layout, skip: set[str] = frozenset()) -> list[str]:
    problems = load_problems(layout, "humaneval")
    raw = layout.dataset("humaneval").raw / "HumanEval.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert len(rows) == len(problems) == 164
    return [sample(r["task_id"], r["canonical_solution"]) for r in rows if r["task_id"] not in skip]


def test_a_file_that_leaves_tasks_unattempted_is_refused(eval_layout, tmp_path):
    path = write_lines(tmp_path / "s.jsonl", canonical_lines(eval_layout, {"HumanEval/7"}))
    with pytest.raises(WmtpError) as caught:
        score_samples(eval_layout, "humaneval", path)
    assert caught.value.line().startswith(
        "the samples cover 163 of the 164 tasks of humaneval's test split; 1 unattempted "
        f"(first: HumanEval/7) [{path}]; "
    )
    assert "--partial" in caught.value.line()
    assert not results_path(path).exists() and not summary_path(path).exists()


def test_partial_scores_the_attempted_tasks_and_names_the_others(eval_layout, tmp_path):
    lines = [*canonical_lines(eval_layout)[:2], sample("HumanEval/2", "    return 0.5\n")]
    summary = score_samples(
        eval_layout, "humaneval", write_lines(tmp_path / "s.jsonl", lines), ks=(1,), partial=True
    )
    assert summary.partial and (summary.n_tasks, summary.n_tasks_in_split) == (3, 164)
    assert summary.unattempted == [f"HumanEval/{i}" for i in range(3, 164)]
    assert summary.tasks == {
        "HumanEval/0": TaskCount(samples=1, passed=1),
        "HumanEval/1": TaskCount(samples=1, passed=1),
        "HumanEval/2": TaskCount(samples=1, passed=0),
    }
    assert summary.pass_at_k == {"pass@1": pytest.approx(2 / 3)}
    written = json.loads(summary_path(tmp_path / "s.jsonl").read_text())
    assert written["unattempted"][0] == "HumanEval/3" and written["partial"] is True


@pytest.mark.parametrize(("make", "kind"), [(os.mkfifo, "a FIFO"), (Path.mkdir, "a folder")])
def test_a_samples_path_that_is_no_regular_file_is_one_line(eval_layout, tmp_path, make, kind):
    path = tmp_path / "samples.jsonl"
    make(path)
    with pytest.raises(WmtpError) as caught:
        score_samples(eval_layout, "humaneval", path)
    assert caught.value.line().startswith(f"samples file is {kind}, not a regular file [{path}]")


def test_a_line_over_the_storage_line_limit_is_refused_before_it_is_held(
    eval_layout, tmp_path, monkeypatch
):
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", "4096")
    lines = [sample("HumanEval/0", "    pass\n"), sample("HumanEval/1", "#" * 10_000)]
    with pytest.raises(WmtpError) as caught:
        score_samples(eval_layout, "humaneval", write_lines(tmp_path / "s.jsonl", lines))
    assert caught.value.line().startswith("line 2 is longer than 4,096 bytes")
    assert "WMTP_MAX_LINE_BYTES" in caught.value.line()


@pytest.mark.parametrize("which", [results_path, summary_path])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_sample_runs(
    eval_layout, tmp_path, monkeypatch, which
):
    from weighted_mtp.eval import scoring

    def never(*_args: object) -> None:
        raise AssertionError("a sample ran")

    monkeypatch.setattr(scoring, "execute", never)
    path = write_lines(tmp_path / "s.jsonl", canonical_lines(eval_layout))
    which(path).mkdir()
    with pytest.raises(WmtpError) as caught:
        score_samples(eval_layout, "humaneval", path)
    assert "is a folder, not a file it can be written to" in caught.value.line()
    assert str(which(path)) in caught.value.line()


def test_scoring_holds_a_batch_of_completions_whatever_the_file_size(
    eval_layout, tmp_path, monkeypatch
):
    """2 MB and 8 MB of completions take the same memory to check and to score: the check
    keeps digests, the execution a batch of 32 jobs at a time (the sandbox answers here)."""
    import tracemalloc

    from weighted_mtp.eval import scoring
    from weighted_mtp.eval.sandbox.pool import Outcome, Sandbox
    from weighted_mtp.eval.scoring import check_samples

    batches = []

    def answer(_self: object, jobs: list[object], _advance: object = None) -> list[Outcome]:
        batches.append(len(jobs))  # the jobs reach the sandbox; running them is not the point
        return [Outcome("failed")] * len(jobs)

    monkeypatch.setattr(Sandbox, "run_all", answer)
    monkeypatch.setattr(scoring, "JOBS_AT_ONCE", 32)
    body = "    return True  # " + "x" * 8_000 + "\n"
    peaks = []
    for count in (256, 1024):
        path = write_lines(
            tmp_path / f"{count}.jsonl",
            [sample(f"HumanEval/{i % 164}", body, sample_id=i) for i in range(count)],
        )
        tracemalloc.start()
        try:
            assert len(check_samples(path, "humaneval").task_ids) == count
            checking = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            score_samples(eval_layout, "humaneval", path)
            peaks.append((checking, tracemalloc.get_traced_memory()[1], path.stat().st_size))
        finally:
            tracemalloc.stop()
    assert batches == [32] * (8 + 32)
    (check_small, score_small, small), (check_large, score_large, large) = peaks
    assert large > 3 * small
    assert check_large < check_small + (512 << 10), peaks  # + task ids and digests
    assert score_large < score_small + (512 << 10), peaks
