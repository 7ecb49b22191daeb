"""The weighted experiments end to end on a tiny storage: `wmtp train suite`, then the
stage-2 commands refusing bad input with one line and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.schemas import assert_matches_schema
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import MICRO_MTP, MICRO_REF
from weighted_mtp.train.batches import BatchPlan, Example, Sharding, require_both_outcomes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def wmtp(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """`wmtp ARGV` in this process: (exit code, stdout, stderr)."""
    from weighted_mtp.cli import main

    monkeypatch.setattr("sys.argv", ["wmtp", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def suite_dir(weighted_storage, tmp_path_factory) -> Path:
    """One small suite run (2 steps per stage), shared by the tests below; read only."""
    out = tmp_path_factory.mktemp("suite") / "suite"
    mp = pytest.MonkeyPatch()
    try:
        from weighted_mtp.cli import main

        argv = ["--root", str(weighted_storage.root), "train", "suite", "--small"]
        mp.setattr("sys.argv", ["wmtp", *argv, "--max-steps", "2", "--out", str(out)])
        torch.set_num_threads(1)
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code in (0, None)
    finally:
        mp.undo()
    return out


def metrics(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_suite_trains_all_three_on_the_same_batches_and_compares(suite_dir):
    assert_matches_schema(suite_dir / "comparison.json", "suite-comparison.schema.json")
    comparison = json.loads((suite_dir / "comparison.json").read_text())
    experiments = comparison["experiments"]
    assert list(experiments) == ["baseline", "verifiable", "rho1"]
    for name, entry in experiments.items():
        assert len(entry["final_validation_per_head"]) == 2, name  # micro-mtp has 2 heads
        assert entry["final_validation_loss"] > 0 and entry["steps"] == 2
    assert [experiments[n]["normalize"] for n in experiments] == ["count", "weight", "selected"]
    # the same data order: every step trains on the same tokens
    steps = {n: [r["tokens"] for r in metrics(suite_dir / n, "train")] for n in experiments}
    assert steps["baseline"] == steps["verifiable"] == steps["rho1"]
    weights = experiments["verifiable"]["weights"]
    assert 0.1 <= weights["weight_min"] <= weights["weight_mean"] <= weights["weight_max"] <= 3
    assert experiments["rho1"]["weights"]["selected_frac"] == pytest.approx(0.6, abs=0.01)
    critic = experiments["verifiable"]["stage_one"]["final_validation"]
    assert 0 <= critic["pairwise_accuracy"] <= 1 and 0 <= critic["auroc"] <= 1
    assert (suite_dir / "validation_loss.png").stat().st_size > 1000
    table = (suite_dir / "comparison.md").read_text()
    assert "| verifiable | weight |" in table and "| rho1 | selected |" in table
    # ... and ends with the three policies' pass@k, the Baseline first, named in comparison.md.
    assert comparison["pass_at_k"] == "pass_at_k/comparison.md"
    assert "[pass_at_k/comparison.md](pass_at_k/comparison.md)" in table
    assert_matches_schema(suite_dir / "pass_at_k" / "comparison.json", "comparison.schema.json")
    pass_at_k = json.loads((suite_dir / "pass_at_k" / "comparison.json").read_text())
    assert [run["name"] for run in pass_at_k["runs"]] == [str(suite_dir / n) for n in experiments]
    assert pass_at_k["baseline"] == "baseline" and pass_at_k["settings"]["ks"] == [1]
    for dataset in ("humaneval", "mbpp"):
        entry = pass_at_k["datasets"][dataset]
        assert entry["n_tasks"] == 4 and list(entry["versus_baseline"]) == ["verifiable", "rho1"]
        assert "mcnemar" in entry["versus_baseline"]["rho1"]  # greedy: one verdict per task
    # Each stage is timed whole (load, train, validate, save), inside the suite's total.
    stages = comparison["stages"]
    assert list(stages) == ["baseline", "critic", "verifiable", "ref-tune", "rho1"]
    assert all(t["wall_s"] > 0 and t["cpu_s"] > 0 for t in stages.values())
    assert comparison["total"]["wall_s"] >= sum(t["wall_s"] for t in stages.values()) - 0.5
    for name, stage_one in (("verifiable", "critic"), ("rho1", "ref-tune")):
        entry = experiments[name]
        assert entry["wall_s"] == stages[name]["wall_s"]
        assert entry["stage_one"]["wall_s"] == stages[stage_one]["wall_s"]
        assert entry["wall_s_with_stage_one"] == pytest.approx(
            stages[name]["wall_s"] + stages[stage_one]["wall_s"], abs=0.11
        )
        assert entry["train_s"] <= entry["wall_s"] + 0.5


def test_the_suite_refuses_before_training_what_it_could_not_evaluate(
    monkeypatch, capsys, train_storage, tmp_path
):
    out = tmp_path / "suite"
    argv = ["--root", str(train_storage.root), "train", "suite", "--small", "--out", str(out)]
    code, _, err = wmtp(monkeypatch, capsys, *argv)
    assert code == 1 and err.count("error:") == 1, err
    assert "humaneval" in err and "not found" in err and "run `wmtp data" in err
    assert not out.exists()


def test_stage_one_runs_hold_what_stage_two_checks(suite_dir, weighted_storage):
    from weighted_mtp.models.adapter import load_reference_model
    from weighted_mtp.storage.hashing import sha256_file

    policy_tokenizer = sha256_file(weighted_storage.model(MICRO_MTP).tokenizer_model)
    for kind in ("critic", "ref-tune"):
        record = json.loads((suite_dir / kind / "final" / "stage.json").read_text())
        assert record["kind"] == kind and record["tokenizer_sha256"] == policy_tokenizer
        assert record["tokenizer_shared_with"] == "meta-llama-mtp"
    tuned = load_reference_model(suite_dir / "ref-tune" / "final")
    base = load_reference_model(weighted_storage.model(MICRO_REF).root)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed, "ref-tune must have trained the reference"
    rho1_config = (suite_dir / "rho1" / "config.yaml").read_text()
    assert f"reference: {suite_dir / 'ref-tune'}" in rho1_config


def refused(monkeypatch, capsys, storage, out: Path, *argv: str) -> str:
    """Run a stage-2 command expected to fail: its one-line error; nothing under `out`."""
    root = ["--root", str(storage.root), "train"]
    code, _, err = wmtp(monkeypatch, capsys, *root, *argv, "--small", "--out", str(out))
    assert code != 0
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return " ".join(err.split())


def test_bad_kappa_is_refused_before_any_run(monkeypatch, capsys, weighted_storage, tmp_path):
    for kappa in ("0", "1.5"):
        err = refused(
            monkeypatch, capsys, weighted_storage, tmp_path / "run", "rho1",
            "--reference", MICRO_REF, "--kappa", kappa,
        )  # fmt: skip
        assert "--kappa must be in (0, 1]" in err


def test_a_missing_stage_one_run_is_refused(monkeypatch, capsys, weighted_storage, tmp_path):
    err = refused(
        monkeypatch, capsys, weighted_storage, tmp_path / "run", "verifiable",
        "--critic", str(tmp_path / "no-such-run"),
    )  # fmt: skip
    assert "is not a finished critic run" in err and "wmtp train critic" in err
    err = refused(monkeypatch, capsys, weighted_storage, tmp_path / "run", "verifiable")
    assert "no critic run given" in err
    err = refused(
        monkeypatch, capsys, weighted_storage, tmp_path / "run", "rho1",
        "--reference", str(tmp_path / "no-such-run"),
    )  # fmt: skip
    assert "is not a finished ref-tune run" in err


def test_a_helper_with_another_tokenizer_is_refused(
    monkeypatch, capsys, weighted_storage, suite_dir, sp_model_path, tmp_path
):
    critic = tmp_path / "critic"
    shutil.copytree(suite_dir / "critic", critic)
    shutil.copyfile(sp_model_path, critic / "final" / "tokenizer" / "tokenizer.model")
    err = refused(
        monkeypatch, capsys, weighted_storage, tmp_path / "run", "verifiable",
        "--critic", str(critic),
    )  # fmt: skip
    assert "uses another tokenizer than the policy micro-mtp" in err
    unshared = tmp_path / "unshared-ref"
    shutil.copytree(weighted_storage.model(MICRO_REF).root, unshared)
    metadata = json.loads((unshared / "metadata.json").read_text())
    (unshared / "metadata.json").write_text(json.dumps(metadata | {"tokenizer_shared_with": None}))
    err = refused(
        monkeypatch, capsys, weighted_storage, tmp_path / "run", "rho1",
        "--reference", str(unshared),
    )  # fmt: skip
    assert "does not record a tokenizer shared with the policy" in err


def example(task: str, correct: bool) -> Example:
    return Example([1, 5, 6, 2], 2, correct, task, f"{task}-{correct}")


def test_a_critic_needs_correct_and_incorrect_solutions(tmp_path):
    with pytest.raises(WmtpError, match="this dataset has no incorrect ones"):
        require_both_outcomes([example("a", True), example("b", True)], tmp_path)
    with pytest.raises(WmtpError, match="this dataset has no correct ones"):
        require_both_outcomes([example("a", False)], tmp_path)
    require_both_outcomes([example("a", True), example("a", False)], tmp_path)


def test_critic_batches_keep_a_task_together_in_a_seeded_order():
    examples = [example(t, c) for t in "abcdef" for c in (True, False)]

    def batches(seed: int) -> list[list[str]]:
        plan = BatchPlan(examples, Sharding(4, 2, 1), seed, 0, by_task=True)
        return [sorted(e.sample_id for e in plan.global_batch(i)) for i in range(3)]

    assert len(batches(1)) == 3
    for batch in batches(1):  # both records of each of two tasks
        assert [s.split("-")[0] for s in batch][0::2] == [s.split("-")[0] for s in batch][1::2]
    assert batches(1) != batches(2)
    assert batches(1) == batches(1)


def test_a_pairwise_critic_trains_and_logs_its_validation(
    monkeypatch, capsys, weighted_storage, tmp_path
):
    out = tmp_path / "critic"
    root = ["--root", str(weighted_storage.root), "train", "critic", "--small"]
    code, stdout, err = wmtp(
        monkeypatch, capsys, *root, "--objective", "pairwise", "--max-steps", "2",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "critic run complete: 2 steps" in stdout and "pairwise_accuracy" in stdout
    record = json.loads((out / "final" / "stage.json").read_text())
    assert record["objective"] == "pairwise"
    train = metrics(out, "train")
    assert [r["step"] for r in train] == [1, 2] and all(r["terms"] > 0 for r in train)
    assert 0 <= metrics(out, "validation")[-1]["pairwise_accuracy"] <= 1


def test_an_unknown_critic_objective_is_refused(monkeypatch, capsys, weighted_storage, tmp_path):
    out = tmp_path / "critic"
    root = ["--root", str(weighted_storage.root), "train", "critic", "--small"]
    code, _, err = wmtp(monkeypatch, capsys, *root, "--objective", "ranking", "--out", str(out))
    assert code != 0 and "--objective wants 'mc' | 'pairwise'" in err
    assert not out.exists()
