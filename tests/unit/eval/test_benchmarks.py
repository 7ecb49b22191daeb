"""Benchmarks are read whole from their raw records: every task of a split (MBPP's test
split is 500 tasks, HumanEval 164), the splits the benchmark has and no other, the tests
chosen (MBPP's challenge tests with `tests="all"`, and the prompt says which run), and
task ids compared exactly as the benchmark writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import (
    MBPP_FAILED_CHALLENGE,
    MBPP_LONG_TASK,
    MBPP_PASSED_CHALLENGE,
    write_mbpp_benchmark,
)
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.problems import canonical_task_id, load_split, require_tests
from weighted_mtp.eval.result_files import TaskCount
from weighted_mtp.eval.scoring import score_samples


@pytest.fixture(scope="module")
def mbpp_layout(tmp_path_factory):
    """A storage holding the 974-task MBPP-format benchmark, downloaded from its mirror."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    base = tmp_path_factory.mktemp("mbpp-benchmark")
    layout = Layout(base / "storage")
    init_storage(layout)
    download_dataset(layout, load_catalog(), "mbpp", mirror=write_mbpp_benchmark(base / "mirror"))
    return layout


@pytest.mark.parametrize(
    ("split", "first", "last", "count"),
    [
        ("prompt", 1, 10, 10),
        ("test", 11, 510, 500),
        ("validation", 511, 600, 90),
        ("train", 601, 974, 374),
    ],
)
def test_mbpp_splits_are_the_benchmarks_official_ones_whole(
    mbpp_layout, split, first, last, count
) -> None:
    benchmark = load_split(mbpp_layout, "mbpp", split)
    assert benchmark.task_ids == tuple(f"mbpp/{n}" for n in range(first, last + 1))
    assert len(benchmark.problems) == len(benchmark.prompts) == count


def test_the_test_split_keeps_the_task_too_long_to_train_on(mbpp_layout) -> None:
    benchmark = load_split(mbpp_layout, "mbpp", "test", only={f"mbpp/{MBPP_LONG_TASK}"})
    assert len(benchmark.task_ids) == 500 and list(benchmark.problems) == [f"mbpp/{MBPP_LONG_TASK}"]
    assert len(benchmark.prompts[f"mbpp/{MBPP_LONG_TASK}"].render()) > 20_000


def test_limit_selects_the_first_tasks_of_the_split(mbpp_layout) -> None:
    benchmark = load_split(mbpp_layout, "mbpp", "test", limit=3)
    assert list(benchmark.problems) == ["mbpp/11", "mbpp/12", "mbpp/13"]
    assert len(benchmark.task_ids) == 500


def test_humaneval_is_the_real_164_tasks(eval_layout) -> None:
    benchmark = load_split(eval_layout, "humaneval", "test")
    assert benchmark.task_ids == tuple(f"HumanEval/{i}" for i in range(164))
    prompt = benchmark.prompts["HumanEval/0"].render()
    assert prompt.endswith("### Response:\n") and "def has_close_elements(" in prompt


@pytest.mark.parametrize(
    ("dataset", "split", "splits"),
    [
        ("humaneval", "validation", "test"),
        ("humaneval", "bogus", "test"),
        ("mbpp", "bogus", "prompt, test, validation, train"),
        ("codecontests", "prompt", "train, validation, test"),
    ],
)
def test_a_split_the_benchmark_lacks_is_one_usage_error(
    eval_layout, dataset, split, splits
) -> None:
    with pytest.raises(UsageError) as caught:
        load_split(eval_layout, dataset, split)
    assert caught.value.line() == f"{dataset} has no split {split!r}; its splits: {splits}"


def _notes(prompt: str) -> str:
    return prompt.split("### Evaluation Notes:\n")[1]


def test_challenge_tests_run_only_with_all_and_the_prompt_says_which_run(mbpp_layout) -> None:
    task = f"mbpp/{MBPP_FAILED_CHALLENGE}"
    base = load_split(mbpp_layout, "mbpp", "test", only={task})
    every = load_split(mbpp_layout, "mbpp", "test", tests="all", only={task})
    challenge = f"assert add_{MBPP_FAILED_CHALLENGE}(1, 2) == -1"
    assert challenge not in base.job(task, "").test
    assert challenge in every.job(task, "").test
    assert "challenge" not in _notes(base.prompts[task].render())
    assert "and 1 challenge tests" in _notes(every.prompts[task].render())
    plain = load_split(mbpp_layout, "mbpp", "test", tests="all", only={"mbpp/13"})
    assert "challenge" not in _notes(plain.prompts["mbpp/13"].render())  # it has none


def test_the_scorer_runs_the_challenge_tests_with_all(mbpp_layout, tmp_path) -> None:
    raw = mbpp_layout.dataset("mbpp").raw / "mbpp.jsonl"
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in raw.read_text().splitlines()}
    lines = [
        json.dumps({"task_id": n, "completion": rows[n]["code"]})
        for n in (MBPP_FAILED_CHALLENGE, MBPP_PASSED_CHALLENGE)
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    base = score_samples(mbpp_layout, "mbpp", path, ks=(1,), partial=True)
    assert base.results["passed"] == 2 and base.tests == "base"
    every = score_samples(mbpp_layout, "mbpp", path, ks=(1,), tests="all", partial=True)
    assert every.results["passed"] == 1 and every.results["failed"] == 1
    assert every.tasks[f"mbpp/{MBPP_FAILED_CHALLENGE}"] == TaskCount(samples=1, passed=0)


@pytest.mark.parametrize("dataset", ["humaneval", "codecontests"])
def test_tests_all_is_refused_where_there_are_no_challenge_tests(dataset) -> None:
    with pytest.raises(UsageError, match=f"{dataset} has no challenge tests; --tests all is"):
        require_tests(dataset, "all")
    with pytest.raises(UsageError, match="--tests 'some' is not one of base, all"):
        require_tests("mbpp", "some")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        (11, "mbpp/11"),
        ("11", "mbpp/11"),
        ("mbpp/11", "mbpp/11"),
        ("011", "011"),
        ("²", "²"),  # str.isdigit() is True for it; int() raises
        ("١", "١"),  # Arabic-Indic one: int() reads it as 1
        ("1١", "1١"),
        (True, "True"),  # a bool is no task number
        (11.0, "11.0"),
    ],
)
def test_mbpp_task_ids_are_compared_as_the_benchmark_writes_them(given, canonical) -> None:
    assert canonical_task_id("mbpp", given) == canonical


@pytest.mark.parametrize("task_id", ["²", "١", "01"])
def test_a_task_id_that_is_no_task_number_is_one_line_naming_it(
    mbpp_layout, tmp_path: Path, task_id: str
) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": task_id, "completion": "x = 1"}) + "\n")
    with pytest.raises(WmtpError) as caught:
        score_samples(mbpp_layout, "mbpp", path, partial=True)
    assert caught.value.line().startswith(f"line 1: unknown task id {task_id!r}")


def test_a_task_listed_twice_in_the_raw_file_is_one_error(tmp_path) -> None:
    from weighted_mtp.storage.layout import Layout

    layout = Layout(tmp_path)
    raw = layout.dataset("mbpp").raw / "mbpp.jsonl"
    raw.parent.mkdir(parents=True)
    row = {"task_id": 11, "text": "t", "code": "x = 1", "test_list": ["assert x == 1"]}
    raw.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(WmtpError, match="line 2: task 'mbpp/11' appears a second time"):
        load_split(layout, "mbpp", "test")
