"""`wmtp eval run RUN`: a tiny Baseline run trained by the CLI (full weights, and a LoRA
adapter), then evaluated on HumanEval and MBPP tasks in the sandbox, end to end; runs that
cannot be evaluated are one line and a non-zero exit. The full run trains and is evaluated
in real processes; the LoRA run through typer's runner in this one (torch is loaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_RUN, cli_error, invoke
from tests.schemas import assert_matches_schema
from weighted_mtp.storage.hashing import sha256_file

LORA = ["--set", "lora.enabled=true", "--set", "final_save=adapter", "--set", "lora.r=4"]
EVAL = ["-n", "1", "--temperature", "0", "--limit", "2", "--max-new-tokens", "8"]


def wmtp(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


@pytest.fixture(scope="module")
def full_run(storage):
    """A Baseline run with full weights, in the storage's runs folder (a real process)."""
    full = wmtp(storage.root, "train", "baseline", *TINY_RUN)
    assert full.returncode == 0, full.stderr
    (run,) = storage.runs_of("baseline").iterdir()
    return storage, run


@pytest.fixture(scope="module")
def lora_run(storage, tmp_path_factory):
    """A Baseline run that saved its LoRA adapter alone, outside the storage."""
    lora = tmp_path_factory.mktemp("lora") / "run"
    adapter = invoke("train", "baseline", *TINY_RUN, *LORA, "--out", str(lora), root=storage.root)
    assert adapter.exit_code == 0, adapter.output
    return storage, lora


def test_a_trained_run_is_evaluated_by_its_run_id_and_results_name_the_run(full_run, tmp_path):
    layout, run = full_run
    out = tmp_path / "he"
    done = wmtp(
        layout.root, "eval", "run", run.name, "--dataset", "humaneval", *EVAL, "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert_matches_schema(out / "results.json", "results.schema.json")
    results = json.loads((out / "results.json").read_text())
    model = results["model"]
    assert model["source"] == "run" and model["format"] == "mtp"
    assert model["run"]["folder"] == str(run) and model["run"]["experiment"] == "baseline"
    assert model["run"]["steps"] == 2 and model["run"]["final"] == "model"
    assert model["run"]["config_sha256"] == sha256_file(run / "config.yaml")
    final_weights = run / "final" / "safetensors" / "model.safetensors"
    assert model["weights_sha256"] == sha256_file(final_weights)
    untrained = json.loads(layout.model("micro-mtp").metadata.read_text())["weights"]["sha256"]
    assert model["weights_sha256"] != untrained
    assert results["n_samples"] == 2 and results["stop_sequences"]  # HumanEval's from the registry
    assert [json.loads(x)["task_id"] for x in (out / "samples.jsonl").read_text().splitlines()] == [
        "HumanEval/0",
        "HumanEval/1",
    ]


def test_a_lora_run_is_merged_onto_its_base_and_evaluated_on_mbpp(lora_run, tmp_path):
    from safetensors.torch import load_file

    from weighted_mtp.eval.generate import load_run_for_generation
    from weighted_mtp.models.adapter import load_mtp_model
    from weighted_mtp.storage.finished_runs import finished_run

    layout, lora = lora_run
    out = tmp_path / "mbpp"
    done = invoke(
        "eval", "run", str(lora), "--dataset", "mbpp", *EVAL, "--out", str(out), root=layout.root
    )
    assert done.exit_code == 0, done.output
    assert_matches_schema(out / "results.json", "results.schema.json")
    model = json.loads((out / "results.json").read_text())["model"]
    assert model["run"]["final"] == "adapter" and model["base"]["name"] == "micro-mtp"
    assert model["weights_sha256"] is None and model["base"]["weights_sha256"]
    assert model["adapter_sha256"] == sha256_file(lora / "final" / "adapter_model.safetensors")
    assert json.loads((out / "results.json").read_text())["dataset"]["split"] == "test"

    # The merge, against W + (alpha / r) * B @ A from the adapter file (float64).
    run = finished_run(layout, str(lora), lora)
    merged = load_run_for_generation(run).model.state_dict()
    base = load_mtp_model(layout.model("micro-mtp").root).state_dict()
    adapter = load_file(lora / "final" / "adapter_model.safetensors")
    peft_config = json.loads((lora / "final" / "adapter_config.json").read_text())
    scale = peft_config["lora_alpha"] / peft_config["r"]
    changed = 0
    for name, weight in base.items():
        stem = f"base_model.model.{name.removesuffix('.weight')}"
        a, b = adapter.get(f"{stem}.lora_A.weight"), adapter.get(f"{stem}.lora_B.weight")
        expected = weight.double()
        if a is not None and b is not None:
            expected = expected + scale * (b.double() @ a.double())  # [out, r] @ [r, in]
            changed += int(b.abs().max() > 0)
        torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-5)
    assert changed > 0  # the adapter trained, so the merge is visible


def test_runs_that_cannot_be_evaluated_are_one_line(full_run, tmp_path):
    layout, run = full_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "summary.json").unlink()
    refused = wmtp(layout.root, "eval", "run", str(unfinished), *EVAL, "--out", str(tmp_path / "o"))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "is unfinished (no summary.json)" in refused.stderr
    assert not (tmp_path / "o").exists()

    no_final = tmp_path / "no-final"
    shutil.copytree(run, no_final)
    shutil.rmtree(no_final / "final")
    error = cli_error("eval", "run", str(no_final), *EVAL, root=layout.root)
    assert "saved no final model" in error.what and error.exit_code == 1

    unknown = cli_error("eval", "run", "baseline/no-such-run", *EVAL, root=layout.root)
    assert "neither a storage model nor a training run" in unknown.what

    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    weights = changed / "final" / "safetensors" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    error = cli_error("eval", "run", str(changed), *EVAL, root=layout.root)
    assert "model.safetensors is changed since it was saved" in error.what
