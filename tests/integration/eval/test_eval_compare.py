"""`wmtp eval compare` end to end on two tiny trained Baseline runs: every run evaluated on
HumanEval and MBPP in the sandbox, the comparison written; the same inputs give the same
comparison.json bytes; matching finished evaluations are reused, others are not; bad input
is one line before anything is evaluated. In this process (typer's runner) to stay fast."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scipy import stats

from tests.helpers import TINY_RUN, cli_error, invoke
from tests.schemas import assert_matches_schema
from weighted_mtp.eval.scoring import results_path
from weighted_mtp.storage.hashing import sha256_file

GREEDY = ["-n", "1", "--temperature", "0", "--limit", "3", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def runs(storage) -> Iterator[list[str]]:
    """Two Baseline runs in the storage's runs folder (different learning rates), named
    `baseline/<run-id>` as a user would. The module runs on one torch thread: tiny models
    gain nothing from more, which only contend on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    names = []
    for lr in ("1e-2", "3e-3"):
        done = invoke("train", "baseline", *TINY_RUN, "--set", f"lr={lr}", root=storage.root)
        assert done.exit_code == 0, done.output
        names.append(f"baseline/{sorted(storage.runs_of('baseline').iterdir())[-1].name}")
    assert names[0] != names[1]
    yield names
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first(storage, runs) -> Path:
    """The first comparison, into the storage's comparisons folder."""
    done = invoke("eval", "compare", *runs, *GREEDY, root=storage.root)
    assert done.exit_code == 0, done.output
    (folder,) = storage.comparisons_dir.iterdir()
    return folder


def verdicts(folder: Path) -> dict[str, list[bool]]:
    by_task: dict[str, list[bool]] = {}
    for line in results_path(folder / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_task.setdefault(row["task_id"], []).append(row["passed"])
    return by_task


def test_two_trained_runs_are_evaluated_and_compared(storage, runs, first):
    assert_matches_schema(first / "comparison.json", "comparison.schema.json")
    comparison = json.loads((first / "comparison.json").read_text())
    assert comparison["baseline"] == runs[0]
    for run, entry in zip(runs, comparison["runs"], strict=True):
        final = storage.runs_dir / run / "final" / "safetensors" / "model.safetensors"
        assert entry == {
            "name": run,
            "label": run,
            "weights_sha256": sha256_file(final),
            "adapter_sha256": None,
            "base_weights_sha256": None,
        }
    assert comparison["settings"]["generation"]["n"] == 1 and comparison["settings"]["ks"] == [1]
    assert list(comparison["datasets"]) == ["humaneval", "mbpp"]
    for dataset, entry in comparison["datasets"].items():
        assert entry["n_tasks"] == 3 and entry["split"] == "test"
        evaluated = []
        for position, run in enumerate(runs, start=1):
            record = entry["evaluations"][run]
            folder = first / record["folder"]
            assert record["folder"] == f"eval/{position}-{Path(run).name}/{dataset}"
            assert_matches_schema(folder / "results.json", "results.schema.json")
            results = json.loads((folder / "results.json").read_text())
            assert results["model"]["run"]["folder"] == str(storage.runs_dir / run)
            assert record["verdicts_sha256"] == sha256_file(results_path(folder / "samples.jsonl"))
            evaluated.append(verdicts(folder))
        # pass@1 and McNemar recomputed here from the verdict files.
        tasks = list(evaluated[0])
        assert len(tasks) == 3 and all(len(v) == 1 for e in evaluated for v in e.values())
        passed = [[e[t][0] for t in tasks] for e in evaluated]
        for run, mine in zip(runs, passed, strict=True):
            assert entry["pass_at_k"]["pass@1"][run]["estimate"] == pytest.approx(sum(mine) / 3)
        difference = entry["versus_baseline"][runs[1]]
        assert difference["pass_at_k"]["pass@1"]["estimate"] == pytest.approx(
            (sum(passed[1]) - sum(passed[0])) / 3
        )
        only = [
            sum(a and not b for a, b in zip(*pair, strict=True)) for pair in (passed, passed[::-1])
        ]
        test = difference["mcnemar"]
        assert [test["baseline_only"], test["other_only"]] == only
        expected = 1.0 if sum(only) == 0 else stats.binomtest(only[0], sum(only)).pvalue
        assert test["p_value"] == pytest.approx(expected)
    table = (first / "comparison.md").read_text()
    assert f"Baseline: {runs[0]}." in table and "## mbpp (test split, 3 tasks)" in table
    assert "McNemar" in table and "![pass@k" in table
    assert (first / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_inputs_give_the_same_comparison_bytes(storage, runs, first, tmp_path):
    again = tmp_path / "again"
    done = invoke(
        "eval", "compare", *runs, *GREEDY, "--no-reuse", "--out", str(again), root=storage.root
    )
    assert done.exit_code == 0, done.output
    assert (again / "eval").is_dir()  # evaluated afresh, not read from the first
    assert (again / "comparison.json").read_bytes() == (first / "comparison.json").read_bytes()


def test_matching_evaluations_are_reused_and_others_are_not(storage, runs, first, tmp_path):
    reused = tmp_path / "reused"
    done = invoke("eval", "compare", *runs, *GREEDY, "--out", str(reused), root=storage.root)
    assert done.exit_code == 0, done.output
    assert "reusing" in done.output and "evaluating" not in done.output
    assert not (reused / "eval").exists()
    comparison = json.loads((reused / "comparison.json").read_text())
    original = json.loads((first / "comparison.json").read_text())
    for dataset, entry in comparison["datasets"].items():
        for run, record in entry["evaluations"].items():
            assert record["folder"] == str(
                first / original["datasets"][dataset]["evaluations"][run]["folder"]
            )
        assert entry["pass_at_k"] == original["datasets"][dataset]["pass_at_k"]
    assert "(reused)" in (reused / "comparison.md").read_text()

    # One setting changed: nothing matches, both runs are evaluated again.
    longer = tmp_path / "longer"
    changed = [*GREEDY[:-1], "9"]
    done = invoke(
        "eval", "compare", *runs, *changed, "--dataset", "humaneval", "--out", str(longer),
        root=storage.root,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "reusing" not in done.output
    assert sorted(p.name for p in (longer / "eval").iterdir()) == [
        f"{i}-{Path(run).name}" for i, run in enumerate(runs, start=1)
    ]


def test_an_eval_run_result_with_the_same_settings_is_reused(storage, runs, tmp_path):
    from weighted_mtp.eval.generate import SamplingConfig
    from weighted_mtp.eval.run import RunSettings, run_evaluation

    sampling = SamplingConfig(temperature=0.0, max_new_tokens=8)
    greedy = RunSettings(dataset="mbpp", n=1, sampling=sampling, limit=3)
    run_evaluation(storage, runs[1], greedy)  # into the storage's eval runs folder
    (evaluated,) = storage.eval_runs_dir.glob("*/mbpp-*")
    out = tmp_path / "mbpp"
    done = invoke(
        "eval", "compare", *runs, *GREEDY, "--dataset", "mbpp", "--out", str(out),
        root=storage.root,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    records = json.loads((out / "comparison.json").read_text())["datasets"]["mbpp"]
    assert records["evaluations"][runs[1]]["folder"] == str(evaluated)


def test_bad_input_is_one_line_before_anything_is_evaluated(storage, runs, tmp_path):
    out = tmp_path / "out"
    cases = [
        ([runs[0]], "needs at least two runs"),
        ([runs[0], "baseline/no-such-run"], "neither a storage model nor a training run"),
        ([*runs, "--k", "10"], "pass@k needs 1 <= k <= samples per task (1)"),
        ([*runs, "--dataset", "humaneval,nope"], "is not a list of distinct datasets"),
        ([*runs, "--resamples", "10"], "too few"),
        ([runs[0], runs[0]], "named twice"),
        ([*runs, "--draft-heads", "1"], "--draft-heads needs --speculative"),
        ([*runs, "--speculative", "--draft-heads", "9"], "--draft-heads must be between 1 and"),
    ]
    for args, message in cases:
        error = cli_error("eval", "compare", *args, *GREEDY, "--out", str(out), root=storage.root)
        assert message in error.what, (args, error.what)
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    error = cli_error("eval", "compare", *runs, *GREEDY, "--out", str(out), root=storage.root)
    assert "output folder is not empty" in error.what
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_base_and_plus_side_by_side(storage, runs, sp_model_path, tmp_path):
    """MBPP+ and HumanEval+ (synthetic mirrors in the hub's schema) compared: MBPP+ with
    base and plus pass@k and their intervals, each run's plus numbers recomputed from its
    per-sample plus verdicts; HumanEval+ (base and plus merged upstream) with one number."""
    from weighted_mtp.assets.benchmarks.humanevalplus import write_humanevalplus_mirror
    from weighted_mtp.assets.benchmarks.mbppplus import write_mbppplus_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.storage.atomic import atomic_write

    for name, write in (
        ("mbppplus", write_mbppplus_mirror),
        ("humanevalplus", write_humanevalplus_mirror),
    ):
        mirror = write(tmp_path / name, atomic_write, plus_inputs=50)
        download_dataset(storage, load_catalog(), name, mirror=mirror)
        prepare_dataset(storage, name, tokenizer=sp_model_path)
    out = tmp_path / "plus-comparison"
    done = invoke(
        "eval",
        "compare",
        *runs,
        "--dataset",
        "mbppplus,humanevalplus",
        *GREEDY,
        "--out",
        str(out),
        root=storage.root,
    )
    assert done.exit_code == 0, done.output
    assert_matches_schema(out / "comparison.json", "comparison.schema.json")
    record = json.loads((out / "comparison.json").read_text())
    plus, merged = record["datasets"]["mbppplus"], record["datasets"]["humanevalplus"]
    assert merged["plus_pass_at_k"] is None and merged["plus_versus_baseline"] is None
    labels = list(plus["pass_at_k"]["pass@1"])
    assert set(plus["plus_pass_at_k"]["pass@1"]) == set(labels)
    assert set(plus["plus_versus_baseline"]) == set(labels[1:])
    for label in labels:
        folder = out / plus["evaluations"][label]["folder"]
        results = json.loads((folder / "results.json").read_text())
        rows = [
            json.loads(x) for x in results_path(folder / "samples.jsonl").read_text().splitlines()
        ]
        assert all(not r["plus_passed"] or r["passed"] for r in rows)  # plus needs base
        assert results["plus_pass_at_k"]["pass@1"] == pytest.approx(
            sum(r["plus_passed"] for r in rows) / len(rows)
        )
        assert plus["plus_pass_at_k"]["pass@1"][label]["estimate"] == pytest.approx(
            results["plus_pass_at_k"]["pass@1"], abs=1e-4
        )
        assert results["plus_results"] is not None and sum(results["plus_results"].values()) == 3
    markdown = (out / "comparison.md").read_text()
    assert "pass@1 base / plus" in markdown and "with the plus tests" in markdown
    assert "pass@1 plus" in done.output
