"""`wmtp eval run` end to end on a tiny micro-mtp built from synthetic sources: tasks and
prompts from the raw benchmark (nothing prepared), generation, sandboxed scoring,
samples.jsonl and results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import (
    MBPP_LONG_TASK,
    TINY_META_PARAMS,
    cli_error,
    wmtp_command,
    write_mbpp_benchmark,
)
from tests.schemas import assert_matches_schema
from weighted_mtp.cli import app
from weighted_mtp.storage.hashing import sha256_file


@pytest.fixture(scope="module")
def eval_storage(tmp_path_factory, sp_model_path):
    from weighted_mtp.assets.benchmarks.humaneval import write_humaneval_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.models.micro import MicroSize, build_micro
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.storage.atomic import atomic_write
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    base = tmp_path_factory.mktemp("evalrun")
    layout = Layout(base / "storage")
    init_storage(layout)
    catalog = load_catalog()
    meta = write_meta_mirror(
        base / "meta", tokenizer_model=sp_model_path, params=dict(TINY_META_PARAMS)
    )
    download_model(layout, catalog, "meta-llama-mtp", mirror=meta)
    size = MicroSize(dim=64, n_layers=4, n_heads=2, vocab_size=8000, n_future_tokens=3)
    build_micro(layout, "micro-mtp", init="random", seed=1, size=size)
    download_dataset(
        layout, catalog, "humaneval", mirror=write_humaneval_mirror(base / "he", atomic_write)
    )
    download_dataset(layout, catalog, "mbpp", mirror=write_mbpp_benchmark(base / "mbpp"))
    return layout


GREEDY = ["-n", "1", "--temperature", "0", "--limit", "5", "--max-new-tokens", "20"]


def eval_args(out: Path, *options: str) -> list[str]:
    return ["eval", "run", "micro-mtp", *options, "--threads", "1", "--out", str(out), "--json"]


def run_in_process(layout, args: list[str]):
    return CliRunner().invoke(app, ["--root", str(layout.root), *args])


def run(layout, out: Path, *extra: str):
    return run_in_process(layout, eval_args(out, "--dataset", "humaneval", *GREEDY, *extra))


def completions(out: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [(row["task_id"], row["completion"]) for row in rows]


def test_speculative_and_plain_greedy_write_identical_samples(eval_storage, tmp_path):
    plain = run(eval_storage, tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    fast = run(eval_storage, tmp_path / "fast", "--speculative")
    assert fast.exit_code == 0, fast.output
    assert completions(tmp_path / "plain") == completions(tmp_path / "fast")
    assert [t for t, _ in completions(tmp_path / "plain")] == [f"HumanEval/{i}" for i in range(5)]
    assert_matches_schema(tmp_path / "fast" / "results.json", "results.schema.json")
    results = json.loads((tmp_path / "fast" / "results.json").read_text())
    assert results["n_samples"] == 5 and set(results["pass_at_k"]) == {"pass@1"}
    assert results["generation"]["drafted"] > 0
    assert (
        results["model"]["weights_sha256"]
        == json.loads(eval_storage.model("micro-mtp").metadata.read_text())["weights"]["sha256"]
    )
    raw = eval_storage.dataset("humaneval").raw / "HumanEval.jsonl"
    # the hash is of the bytes the tasks were read from, hashed as they were read
    assert results["dataset"]["raw"] == {str(raw): sha256_file(raw)}
    assert results["dataset"]["tasks"] == 164 and results["unattempted"] == 164 - 5
    assert (tmp_path / "fast" / "samples.jsonl_results.jsonl").is_file()


def is_read(args: tuple) -> bool:
    """An `open` audit event's (path, mode, flags) opens for reading only."""
    _path, mode, flags = args
    if mode is not None:
        return not any(c in mode for c in "wax+")
    return flags & (os.O_WRONLY | os.O_RDWR) == 0


def test_eval_run_reads_the_benchmark_once_and_writes_the_samples_once(eval_storage, tmp_path):
    """The evaluation path is one way: the process's file opens and renames are watched (an
    audit hook) while it runs. The raw benchmark is read once; samples.jsonl is moved into
    place once and never opened to be read (the samples go to scoring in memory); its
    SHA-256 in the summary is its bytes'. The verdicts are the ones `eval score` gives the
    same file, and results.json validates against its published schema."""
    out = tmp_path / "counted"
    samples = out / "samples.jsonl"
    raw = eval_storage.dataset("humaneval").raw
    events: list[tuple[str, tuple]] = []
    watching = [True]

    def hook(event: str, args: tuple) -> None:
        if watching and event in ("open", "os.rename"):
            events.append((event, args))

    sys.addaudithook(hook)  # stays for the process: `watching` turns it off
    try:
        done = run(eval_storage, out, "--temperature", "0.8", "-n", "2")
    finally:
        watching.clear()
    assert done.exit_code == 0, done.output

    def opened(reading: bool) -> list[Path]:
        return [
            Path(args[0]).resolve()
            for event, args in events
            if event == "open" and isinstance(args[0], (str, Path)) and is_read(args) == reading
        ]

    read = opened(reading=True)
    benchmark = (raw / "HumanEval.jsonl").resolve()
    assert [p for p in read if p.is_relative_to(raw.resolve())] == [benchmark]
    assert samples.resolve() not in read
    moved = [Path(args[1]) for event, args in events if event == "os.rename"]
    assert moved.count(samples) == 1

    assert_matches_schema(out / "results.json", "results.schema.json")
    summary = json.loads((out / "samples.jsonl_summary.json").read_text())
    assert summary["samples_sha256"] == sha256_file(samples) and summary["n_samples"] == 10
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    verdicts = [
        json.loads(x) for x in (out / "samples.jsonl_results.jsonl").read_text().splitlines()
    ]
    assert [{k: v[k] for k in rows[0]} for v in verdicts] == rows

    again = tmp_path / "again" / "samples.jsonl"
    again.parent.mkdir()
    again.write_bytes(samples.read_bytes())
    scored = run_in_process(
        eval_storage, ["eval", "score", "--dataset", "humaneval", "--samples", str(again),
                       "--partial", "--k", "1"],
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    assert (again.parent / "samples.jsonl_results.jsonl").read_bytes() == (
        out / "samples.jsonl_results.jsonl"
    ).read_bytes()
    results = json.loads((out / "results.json").read_text())
    rescored = json.loads((again.parent / "samples.jsonl_summary.json").read_text())
    assert results["tasks"] == rescored["tasks"] and results["pass_at_k"] == rescored["pass_at_k"]


def test_a_model_that_does_not_verify_is_refused_before_generating(eval_storage, tmp_path):
    weights = eval_storage.model("micro-mtp").weights
    original = weights.read_bytes()
    try:
        flipped = bytearray(original)
        flipped[-5] ^= 0xFF
        weights.write_bytes(bytes(flipped))
        refused = run(eval_storage, tmp_path / "out")
        assert refused.exit_code != 0
        assert "does not verify" in str(refused.exception)
        assert not (tmp_path / "out" / "samples.jsonl").exists()
    finally:
        weights.write_bytes(original)


def test_the_mbpp_test_split_is_500_tasks_and_a_prompt_over_the_context_is_cut(
    eval_storage, tmp_path
):
    out = tmp_path / "mbpp"
    options = ["--dataset", "mbpp", "-n", "1", "--temperature", "0", "--max-new-tokens", "1"]
    done = run_in_process(eval_storage, eval_args(out, *options))
    assert done.exit_code == 0, done.output
    results = json.loads((out / "results.json").read_text())
    assert results["n_tasks"] == results["n_tasks_in_split"] == results["n_samples"] == 500
    assert results["unattempted"] == 0 and results["dataset"]["tasks"] == 500
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [row["task_id"] for row in rows] == [f"mbpp/{n}" for n in range(11, 511)]
    cut = {p["task_id"]: p for p in results["prompts_cut"]}
    long = cut[f"mbpp/{MBPP_LONG_TASK}"]
    assert long["fit"] == "head dropped" and long["full_tokens"] > results["context"]
    assert long["tokens"] <= results["context"] - 1
    summary = json.loads((out / "samples.jsonl_summary.json").read_text())
    assert summary["n_tasks"] == 500 and not summary["partial"] and summary["tests"] == "base"

    shorter = tmp_path / "499.jsonl"
    shorter.write_text(
        "".join(line + "\n" for line in (out / "samples.jsonl").read_text().splitlines()[1:])
    )
    error = cli_error(
        "eval", "score", "--dataset", "mbpp", "--samples", str(shorter), root=eval_storage.root
    )
    assert "the samples cover 499 of the 500 tasks of mbpp's test split" in error.line()


def test_samples_are_the_same_for_every_batch_size_and_two_torchrun_ranks(eval_storage, tmp_path):
    """Greedy (12 tasks) and seeded sampling (5 tasks x 4 samples): one process decoding 1,
    7 and 16 rows at a time, and two gloo ranks on the CPU (tasks dealt out, rank 0 merges
    them back, `--batch-size auto`), write byte-identical samples.jsonl. Both torchrun
    launches run while this process evaluates alone."""
    greedy = ["-n", "1", "--temperature", "0", "--limit", "12", "--max-new-tokens", "20"]
    sampled = ["-n", "4", "--temperature", "0.8", "--seed", "3", "--limit", "5"]
    modes = {"greedy": greedy, "sampled": [*sampled, "--max-new-tokens", "12"]}
    samples = {"greedy": 12, "sampled": 20}
    launched = {
        mode: subprocess.Popen(
            wmtp_command(
                *eval_args(tmp_path / f"{mode}-two", "--dataset", "humaneval", *options),
                root=eval_storage.root,
                ranks=2,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for mode, options in modes.items()
    }
    for mode, options in modes.items():
        written = {}
        for rows in ("1", "7", "16"):
            one = tmp_path / f"{mode}-{rows}"
            args = eval_args(one, "--dataset", "humaneval", *options, "--batch-size", rows)
            single = run_in_process(eval_storage, args)
            assert single.exit_code == 0, single.output
            written[rows] = (one / "samples.jsonl").read_bytes()
            generation = json.loads((one / "results.json").read_text())["generation"]
            assert generation["batch_size"] == min(int(rows), samples[mode])
        log, _ = launched[mode].communicate(timeout=600)
        assert launched[mode].returncode == 0, log[-3000:]
        two = tmp_path / f"{mode}-two"
        assert written["1"] == written["7"] == written["16"] == (two / "samples.jsonl").read_bytes()
        results = json.loads((two / "results.json").read_text())
        assert results["generation"]["ranks"] == 2
        assert results["generation"]["batch_size_reason"].startswith("auto:")
    rows = [
        json.loads(x) for x in (tmp_path / "sampled-1" / "samples.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 20 and len({row["completion"] for row in rows}) > 12  # not greedy


def test_draft_heads_are_recorded_and_checked(eval_storage, tmp_path):
    """`--draft-heads 1` writes plain greedy's samples and records 1; the default records
    what the model's shape chooses; a count the model lacks, or one without
    --speculative, is refused in one line before any sample is written."""
    from weighted_mtp.eval.speculative import default_draft_heads
    from weighted_mtp.models.adapter import read_mtp_params

    plain = run(eval_storage, tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    one = run(eval_storage, tmp_path / "one", "--speculative", "--draft-heads", "1")
    assert one.exit_code == 0, one.output
    assert completions(tmp_path / "one") == completions(tmp_path / "plain")
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["settings"]["draft_heads"] == 1 and results["settings"]["speculative"]
    assert results["generation"]["draft_heads"] == 1
    default = run(eval_storage, tmp_path / "default", "--speculative")
    assert default.exit_code == 0, default.output
    recorded = json.loads((tmp_path / "default" / "results.json").read_text())
    params = read_mtp_params(eval_storage.model("micro-mtp"))
    # the settings say what was asked (the model's default), the generation what ran
    assert recorded["settings"]["draft_heads"] is None
    assert recorded["generation"]["draft_heads"] == default_draft_heads(params)
    # every pass yields its accepted drafts and one token more, but a sample that ends
    # inside its drafts (5 samples here) yields no more token
    gen = recorded["generation"]
    assert (
        gen["passes"] + gen["accepted"] - 5 <= gen["new_tokens"] <= gen["passes"] + gen["accepted"]
    )
    plain_gen = json.loads((tmp_path / "plain" / "results.json").read_text())["generation"]
    # the 5 tasks decode together: a prefill per prompt, then a step per token of the
    # longest sample (20 at most), each step a token of every running row
    assert plain_gen["batch_size"] == 5 and plain_gen["passes"] <= 5 + 19
    for extra, message in (
        (("--speculative", "--draft-heads", "3"), "--draft-heads must be between 1 and 2"),
        (("--draft-heads", "1"), "--draft-heads needs --speculative"),
    ):
        refused = run(eval_storage, tmp_path / "refused", *extra)
        assert refused.exit_code != 0, refused.output
        assert message in str(refused.exception)
        assert not (tmp_path / "refused" / "samples.jsonl").exists()
