"""`wmtp eval run` end to end on a tiny micro-mtp built from synthetic sources: prompts from
the processed records, generation, sandboxed scoring, samples.jsonl and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import TINY_META_PARAMS
from weighted_mtp.cli import app
from weighted_mtp.storage.hashing import sha256_file


@pytest.fixture(scope="module")
def eval_storage(tmp_path_factory, sp_model_path):
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.models.download import download_model
    from weighted_mtp.models.micro import MicroSize, build_micro
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.synthetic.datasets import write_humaneval_mirror
    from weighted_mtp.synthetic.models import write_meta_mirror

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
    download_dataset(layout, catalog, "humaneval", mirror=write_humaneval_mirror(base / "he"))
    prepare_dataset(layout, "humaneval", tokenizer=sp_model_path)
    return layout


def run(layout, out: Path, *extra: str):
    args = ["--root", str(layout.root), "eval", "run", "micro-mtp", "--dataset", "humaneval"]
    args += ["--n", "1", "--temperature", "0", "--limit", "5", "--max-new-tokens", "20"]
    return CliRunner().invoke(app, [*args, "--threads", "1", "--out", str(out), "--json", *extra])


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
    results = json.loads((tmp_path / "fast" / "results.json").read_text())
    assert results["n_samples"] == 5 and set(results["pass_at_k"]) == {"pass@1"}
    assert results["generation"]["drafted"] > 0
    assert (
        results["model"]["weights_sha256"]
        == json.loads(eval_storage.model("micro-mtp").metadata.read_text())["weights"]["sha256"]
    )
    raw = eval_storage.dataset("humaneval").raw / "HumanEval.jsonl"
    processed = eval_storage.dataset("humaneval").split("test")
    # the hashes come from the freshness store where it vouches for the file: they must be
    # the bytes' own
    assert results["dataset"]["raw"] == {str(raw): sha256_file(raw)}
    assert results["dataset"]["processed"] == {str(processed): sha256_file(processed)}
    assert (tmp_path / "fast" / "samples.jsonl_results.jsonl").is_file()


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
