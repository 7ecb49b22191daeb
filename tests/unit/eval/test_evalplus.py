"""HumanEval+ and MBPP+ (EvalPlus) from mirrors in the hub's format: the files hold the
hub's columns at the hub's paths, and through download, problems and the sandbox the
canonical solutions pass their base and plus tests, while a solution that only handles the
base inputs passes base and fails plus, and floats count within the task's `atol`.

The mirrors are synthetic (the hub is not reachable from tests): they show the mechanism on
rows in the upstream format, not that all 164 / 378 upstream tasks pass."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from weighted_mtp.assets.benchmarks import humanevalplus, mbppplus
from weighted_mtp.catalog import load_catalog
from weighted_mtp.data.download import download_dataset
from weighted_mtp.eval.problems import load_split
from weighted_mtp.eval.scoring import results_path, score_samples
from weighted_mtp.storage.atomic import atomic_write
from weighted_mtp.storage.init import init_storage
from weighted_mtp.storage.layout import Layout

MIRRORS = {
    "humanevalplus": (humanevalplus.write_humanevalplus_mirror, humanevalplus.COLUMNS),
    "mbppplus": (mbppplus.write_mbppplus_mirror, mbppplus.COLUMNS),
}


@pytest.fixture(scope="module")
def plus_layout(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalplus")
    layout = Layout(base / "storage")
    init_storage(layout)
    for name, (write, _columns) in MIRRORS.items():
        mirror = write(base / name, atomic_write, plus_inputs=200)
        download_dataset(layout, load_catalog(None), name, mirror=mirror)
    return layout


@pytest.mark.parametrize("name", list(MIRRORS))
def test_the_mirror_is_the_hubs_file_with_its_columns(tmp_path, name):
    write, columns = MIRRORS[name]
    write(tmp_path, atomic_write)
    (pattern,) = [spec.path for spec in load_catalog(None).dataset(name).files]
    (path,) = tmp_path.glob(pattern)
    table = pq.read_table(path)
    assert tuple(table.column_names) == columns
    tests = table.column("test").to_pylist()
    assert len(tests) == len(humanevalplus.MIRROR_TASKS)
    assert any("0.0001)" in test for test in tests)  # the float task with its atol
    assert all(test.count("\n") < 40 for test in tests)  # literal inputs, one line each


def write_samples(path: Path, samples: list[tuple[object, str]]) -> Path:
    lines = [
        json.dumps({"task_id": task, "completion": code, "sample_id": i})
        for i, (task, code) in enumerate(samples)
    ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def canonical(name: str, layout: Layout) -> list[tuple[str, str]]:
    split = load_split(layout, name, "test")
    rows = [json.loads(line) for line in split.files[0].read_text().splitlines()]
    field = "canonical_solution" if name == "humanevalplus" else "code"
    return [(BENCH_ID[name](row["task_id"]), row[field]) for row in rows]


BENCH_ID = {"humanevalplus": str, "mbppplus": lambda number: f"mbppplus/{number}"}


@pytest.mark.parametrize("name", list(MIRRORS))
def test_canonical_solutions_pass_base_and_plus_through_the_sandbox(plus_layout, tmp_path, name):
    samples = canonical(name, plus_layout)
    assert len(samples) == len(humanevalplus.MIRROR_TASKS)
    summary = score_samples(
        plus_layout, name, write_samples(tmp_path / "s.jsonl", samples), ks=(1,)
    )
    assert summary.pass_at_k == {"pass@1": 1.0}, summary.results
    if name == "mbppplus":
        assert summary.plus_pass_at_k == {"pass@1": 1.0}, summary.plus_results
    else:  # the hub's HumanEval+ merges base and plus inputs into one test
        assert summary.plus_pass_at_k is None


def by_entry(name: str, layout: Layout) -> dict[str, str]:
    """Task id of each mirror task by its function's name."""
    ids = [task for task, _code in canonical(name, layout)]
    return {t.entry_point: ids[i] for i, t in enumerate(humanevalplus.MIRROR_TASKS)}


def test_mbpp_plus_is_base_then_plus_as_evalplus_scores_it(plus_layout, tmp_path):
    tasks = by_entry("mbppplus", plus_layout)
    samples = [
        (tasks["largest"], "def largest(values):\n    return max(values)\n"),  # base only
        (tasks["largest"], "def largest(values):\n    return max(values, default=None)\n"),
        (tasks["hypotenuse"], "def hypotenuse(a, b):\n    return (a * a + b * b) ** 0.5 + 1e-5\n"),
        (tasks["hypotenuse"], "def hypotenuse(a, b):\n    return (a * a + b * b) ** 0.5 + 1e-3\n"),
        (tasks["add"], "def add(x, y):\n    return x + y if abs(x) < 100 else 0\n"),  # base only
        (tasks["add"], "def add(x, y):\n    return x - y\n"),  # fails both
    ]
    path = write_samples(tmp_path / "s.jsonl", samples)
    summary = score_samples(plus_layout, "mbppplus", path, ks=(1,), partial=True)
    rows = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, True, False, True, False]
    assert [r["plus_passed"] for r in rows] == [False, True, True, False, False, False]
    assert rows[5]["plus_result"] == rows[5]["result"] == "failed"  # plus never ran
    assert summary.tasks[tasks["largest"]].plus_passed == 1
    assert summary.pass_at_k["pass@1"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert summary.plus_pass_at_k == {"pass@1": pytest.approx((0.5 + 0.5 + 0) / 3)}


def test_humaneval_plus_tests_catch_what_the_base_inputs_miss(plus_layout, tmp_path):
    tasks = by_entry("humanevalplus", plus_layout)
    samples = [
        (tasks["largest"], "    return max(values)\n"),
        (tasks["largest"], "    return max(values) if values else None\n"),
        (tasks["mean"], "    return sum(values) / len(values) + 1e-9\n"),  # within 1e-6
    ]
    path = write_samples(tmp_path / "s.jsonl", samples)
    summary = score_samples(plus_layout, "humanevalplus", path, ks=(1,), partial=True)
    rows = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    assert [r["passed"] for r in rows] == [False, True, True]
    assert summary.pass_at_k["pass@1"] == pytest.approx((0.5 + 1) / 2)
