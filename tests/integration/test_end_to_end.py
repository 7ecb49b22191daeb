"""Acceptance: `wmtp demo` ends all ✔; a second build changes nothing; damage is named;
a killed build resumes to a storage that verifies.

One demo storage is built per session (through the CLI, as a newcomer runs it); tests that
only read it share it, tests that damage or rebuild it work on a copy.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weighted_mtp.catalog import load_catalog
from weighted_mtp.cli import app
from weighted_mtp.pipeline.build import build
from weighted_mtp.pipeline.checklist import run_checklist
from weighted_mtp.pipeline.demo import mirror_for
from weighted_mtp.pipeline.records import read_log
from weighted_mtp.storage.layout import Layout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "storage"
    result = CliRunner().invoke(app, ["demo", "--root", str(root)])
    return root, result


@pytest.fixture
def demo_copy(demo, tmp_path):
    """A private copy of the demo storage (its mirror stays shared and read-only)."""
    root, _ = demo
    copy = tmp_path / "storage"
    shutil.copytree(root, copy, symlinks=True)
    return Layout(copy), mirror_for(root)


def _run(*args):
    return CliRunner().invoke(app, list(args))


def _asset_snapshot(layout):
    from weighted_mtp.pipeline.manifest import iter_asset_files

    files = {}
    for path in iter_asset_files(layout):
        stat = path.stat()
        files[layout.relative(path)] = (
            stat.st_size,
            stat.st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    for path in (
        layout.manifest,
        layout.checksums,
        layout.approvals,
        layout.readme,
        *sorted(layout.reports_dir.iterdir()),
    ):
        files[layout.relative(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def test_demo_ends_with_every_checklist_step_ok(demo):
    root, result = demo
    assert result.exit_code == 0, result.output
    for number in range(12):
        assert f"✔ Step {number}:" in result.output
    assert "every step ✔" in result.output
    assert "wmtp build" in result.output and str(root) in result.output


def test_demo_migration_notes_name_the_automatic_deviations(demo):
    root, _ = demo
    notes = Layout(root).report("migration_notes.md").read_text(encoding="utf-8")
    assert "meta-llama-mtp: weights converted from bfloat16 to float16" in notes
    assert (
        "micro-mtp: tokenizer trimmed from meta-llama-mtp's 8320 to 8000 pieces; its 83 rarest "
        "merges (ids 7917-7999) hold the single characters" in notes
    )
    assert "facts (model type, vocab size, special ids) are under `sentencepiece`" in notes
    assert "taken from the mirror" in notes
    layout = Layout(root)
    checklist = run_checklist(layout)  # again, from the bytes
    assert checklist.ok, [s.to_dict() for s in checklist.failed()]
    for name in ("meta-llama-mtp", "ref-sheared-llama-2.7b", "micro-mtp", "micro-ref"):
        assert layout.model(name).weights.is_file()
    for name in ("codecontests", "mbpp", "humaneval"):
        assert layout.dataset(name).summaries()
        assert any(layout.small(name).root.iterdir())


def test_verify_json_reports_every_step(demo):
    import json

    root, _ = demo
    result = _run("--root", str(root), "verify", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] and data["storage_version"] == "2.0.0"
    assert [s["step"] for s in data["steps"]] == list(range(12))


def test_demo_json_is_the_only_thing_on_stdout(demo):
    import json

    root, _ = demo
    result = _run("demo", "--root", str(root), "--json")  # a rerun: every step is done
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["root"] == str(root) and data["checklist"]["ok"]
    assert {s["status"] for s in data["build"]["steps"]} == {"skipped"}
    assert not data["approved_now"] and data["backup"] is None  # both done the first time
    assert "note: verify skipped in" in result.stderr  # the steps, on stderr


def test_second_build_changes_nothing(demo_copy):
    layout, mirror = demo_copy
    before = _asset_snapshot(layout)
    result = build(layout, load_catalog(), mirror=mirror)
    assert {o.status for o in result.outcomes} == {"skipped"}
    assert not result.changed_anything
    assert _asset_snapshot(layout) == before


def test_a_build_without_mirror_or_network_after_the_demo_changes_nothing(demo_copy):
    """Raw files that match their SOURCE.json are kept whatever their source: a plain
    `wmtp build` (the hub by default) on a demo storage fetches nothing."""
    layout, mirror = demo_copy
    before = _asset_snapshot(layout)
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(layout.root), "build"],
        env={**offline, "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"kept files from mirror {mirror}" in result.stdout
    assert "MANIFEST.json unchanged" in result.stdout
    assert _asset_snapshot(layout) == before


def test_refresh_fetches_a_download_again_from_the_given_source(demo_copy):
    layout, mirror = demo_copy
    kept = build(layout, load_catalog(), only=["download-mbpp"])
    assert [o.status for o in kept.outcomes] == ["skipped"]
    refreshed = build(layout, load_catalog(), mirror=mirror, only=["download-mbpp"], refresh=True)
    assert [o.status for o in refreshed.outcomes] == ["ran"]
    # The same bytes again; only the record of the download is new.
    assert refreshed.manifest_diff.files() == ["datasets_v2/mbpp/raw/SOURCE.json"]


def test_the_demo_backs_up_beside_its_root(demo):
    from weighted_mtp.pipeline.backup_record import backup_status
    from weighted_mtp.pipeline.demo import backup_for

    root, result = demo
    assert f"backed up to {backup_for(root)}" in result.output
    ok, detail, _ = backup_status(Layout(root))
    assert ok and str(backup_for(root)) in detail
    assert "tag: tag v2.0.0-demo." in result.output


def test_a_backup_verifies_on_its_own_and_a_flipped_byte_there_is_named(demo_copy, tmp_path):
    layout, _ = demo_copy
    dest = tmp_path / "backup"
    result = _run("--root", str(layout.root), "backup", str(dest))
    assert result.exit_code == 0, result.output
    assert "every file verified against MANIFEST.json" in result.output
    verified = _run("--root", str(dest), "verify")
    assert verified.exit_code == 0, verified.output
    assert "this is the verified backup of" in verified.output

    weights = "models_v2/micro-ref/safetensors/model.safetensors"
    _flip_byte_keeping_mtime(dest / weights)
    damaged = _run("--root", str(dest), "verify")
    assert damaged.exit_code == 1 and weights in damaged.output
    source = _run("--root", str(layout.root), "verify")
    assert source.exit_code == 0, source.output


def test_a_storage_awaiting_approval_is_not_verified_again_by_build(demo_copy):
    layout, mirror = demo_copy
    layout.approvals.unlink()
    result = _run("--root", str(layout.root), "verify")
    assert result.exit_code == 1 and "✘ Step 11" in result.output
    assert "not approved yet" in result.output
    rebuilt = build(layout, load_catalog(), mirror=mirror)
    assert {o.status for o in rebuilt.outcomes} == {"skipped"}


def test_truncated_small_set_file_fails_verify_and_is_named(demo_copy):
    layout, _ = demo_copy
    small = layout.small("mbpp").split("train")
    small.write_bytes(small.read_bytes()[: small.stat().st_size // 2])
    result = _run("--root", str(layout.root), "verify")
    assert result.exit_code == 1
    assert "✘ Step 9" in result.output
    assert "datasets_local_small/mbpp_small/train_small.jsonl" in result.output


def test_flipped_byte_in_safetensors_fails_verify_and_is_named(demo_copy):
    layout, _ = demo_copy
    _flip_byte_keeping_mtime(layout.model("micro-ref").weights)  # size and mtime unchanged
    result = _run("--root", str(layout.root), "verify")
    assert result.exit_code == 1
    assert "models_v2/micro-ref/safetensors/model.safetensors" in result.output
    assert "stale" in result.output  # the approval no longer covers these bytes


def _flip_byte_keeping_mtime(path, offset_from_end=7):
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(stat.st_size - offset_from_end)
        byte = handle.read(1)
        handle.seek(stat.st_size - offset_from_end)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize(
    "damaged,step",
    [
        ("models_v2/micro-ref/safetensors/model.safetensors", "micro-ref"),
        ("datasets_v2/mbpp/raw/mbpp.jsonl", "download-mbpp"),
    ],
)
def test_build_repairs_what_verify_found_even_with_unchanged_size_and_mtime(
    demo_copy, damaged, step
):
    layout, mirror = demo_copy
    _flip_byte_keeping_mtime(layout.root / damaged)
    result = _run("--root", str(layout.root), "verify")
    assert result.exit_code == 1 and damaged in result.output
    repaired = build(layout, load_catalog(), mirror=mirror)
    assert {o.name: o.status for o in repaired.outcomes}[step] == "ran"
    checklist = run_checklist(layout, through="documents")
    assert checklist.ok, [s.to_dict() for s in checklist.failed()]


def _wait_for_log(layout, predicate, process, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(read_log(layout)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.usefixtures("sigint_default")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_build_resumes_to_a_storage_that_verifies(demo_copy, sig):
    layout, mirror = demo_copy
    for name in ("micro-mtp", "micro-ref"):
        shutil.rmtree(layout.model(name).root)
    shutil.rmtree(layout.small("mbpp").root)
    started = len(read_log(layout))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "weighted_mtp",
            "--root",
            str(layout.root),
            "build",
            "--mirror",
            str(mirror),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    reached = _wait_for_log(
        layout,
        lambda log: any(e["step"] == "micro-mtp" and e["status"] == "ran" for e in log[started:]),
        process,
    )
    process.send_signal(sig)
    output = process.communicate(timeout=600)[0].decode()
    assert reached, output
    if sig == signal.SIGINT:
        assert process.returncode == 130, output
        assert "interrupted" in output
    else:
        assert process.returncode == -signal.SIGKILL

    resumed = build(layout, load_catalog(), mirror=mirror)
    statuses = {o.name: o.status for o in resumed.outcomes}
    assert statuses["micro-mtp"] == "skipped"
    assert statuses["download-meta"] == "skipped"
    checklist = run_checklist(layout, through="documents")
    assert checklist.ok, [s.to_dict() for s in checklist.failed()]
    assert Path(layout.small("mbpp").split("train")).is_file()


def test_report_and_approve_through_the_cli(demo_copy):
    from weighted_mtp.errors import WmtpError
    from weighted_mtp.pipeline.records import load_approvals

    layout, _ = demo_copy
    root = str(layout.root)
    result = _run("--root", root, "report")
    assert result.exit_code == 0, result.output
    assert "wrote reports/asset_inventory.md" in result.output
    result = _run("--root", root, "approve", "--by", "Kim Reviewer")
    assert result.exit_code == 0, result.output
    assert [a["by"] for a in load_approvals(layout)][-1] == "Kim Reviewer"
    assert "approved by Kim Reviewer" in _run("--root", root, "verify").output

    layout.small("humaneval").split("test").write_text("")
    result = _run("--root", root, "approve", "--by", "Kim Reviewer")
    assert isinstance(result.exception, WmtpError)
    assert "cannot approve" in str(result.exception)
    assert "humaneval_small/test_small.jsonl" in str(result.exception)


def test_demo_refuses_a_root_with_assets_from_elsewhere(demo_copy):
    from weighted_mtp.errors import WmtpError

    layout, _ = demo_copy  # its SOURCE.json files name the original demo's mirror
    result = _run("demo", "--root", str(layout.root))
    assert isinstance(result.exception, WmtpError)
    assert "did not make" in str(result.exception)


def test_transformers_gives_sentencepiece_ids_for_every_model_and_export(demo, tmp_path):
    """AutoTokenizer on each model's tokenizer/ folder and on the
    exports of the two Meta-format models gives SentencePiece's ids (BOS first) for every
    small-set record and every edge case, and decodes them back."""
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    from weighted_mtp.models.export_hf import export_hf
    from weighted_mtp.models.tokenizer_agreement import EDGE_CASES

    root, _ = demo
    layout = Layout(root)
    texts = list(EDGE_CASES)
    for path in sorted(layout.small_dir.glob("*/*_small.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [record["prompt"], record["response"]]
    assert len(texts) > len(EDGE_CASES) + 300
    folders = {
        name: layout.model(name).tokenizer_dir
        for name in ("meta-llama-mtp", "ref-sheared-llama-2.7b", "micro-mtp", "micro-ref")
    }
    for name in ("meta-llama-mtp", "micro-mtp"):
        folders[f"{name} export"] = export_hf(layout, name, tmp_path / name)
    for name, folder in folders.items():
        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            assert ids == [1, *sp.encode(text)], (name, text[:80])
            if sp.decode(ids) == text:
                assert tokenizer.decode(ids, skip_special_tokens=True) == text, (name, text[:80])


@pytest.mark.parametrize("dataset", ["mbppplus", "humanevalplus"])
def test_the_demo_evaluates_the_plus_benchmarks(demo, tmp_path, dataset):
    """The demo's HumanEval+ and MBPP+ (synthetic rows in the hub's schema) through `eval
    run` with micro-mtp: MBPP+ reports base and plus pass@k (plus from the per-sample plus
    verdicts, never above the base), HumanEval+ one number (base and plus merged upstream)."""
    import json

    from weighted_mtp.eval.scoring import results_path

    root, _ = demo
    out = tmp_path / "eval"
    args = ["-n", "2", "--temperature", "0.8", "--max-new-tokens", "12", "--out", str(out)]
    done = _run("--root", str(root), "eval", "run", "micro-mtp", "--dataset", dataset, *args)
    assert done.exit_code == 0, done.output
    results = json.loads((out / "results.json").read_text())
    rows = [json.loads(x) for x in results_path(out / "samples.jsonl").read_text().splitlines()]
    assert results["n_tasks"] == results["n_tasks_in_split"] == 5 and len(rows) == 10
    base = sum(r["passed"] for r in rows) / len(rows)
    assert results["pass_at_k"]["pass@1"] == pytest.approx(base)
    if dataset == "humanevalplus":
        assert results["plus_pass_at_k"] is None and "plus_passed" not in rows[0]
        return
    plus = sum(r["plus_passed"] for r in rows) / len(rows)
    assert results["plus_pass_at_k"]["pass@1"] == pytest.approx(plus)
    assert plus <= base
    assert all(r["passed"] or r["plus_result"] == r["result"] for r in rows)
    assert sum(results["plus_results"].values()) == len(rows)
    assert "plus" in done.output
