"""Checkpoints of two gloo ranks: each rank's file is hashed as that rank wrote it, and on
resume both ranks agree to skip a damaged newest checkpoint for the good one before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from weighted_mtp.storage.hashing import read_sha256sums, sha256_file

WORKER = Path(__file__).with_name("checkpoint_ranks_worker.py")


def damage_when_saved(run: Path, workers: list[subprocess.Popen[str]]) -> list[str]:
    """Check step 2's checksums once both ranks saved it, damage the second rank's file,
    let the workers resume; their stderr."""
    deadline = time.monotonic() + 300
    while not (run / "saved").exists():
        assert all(w.poll() is None for w in workers), workers[0].stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    step2 = run / "checkpoints" / "step-00000002"
    sums = read_sha256sums(step2 / "SHA256SUMS")
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer_state.json"} <= set(sums)
    assert all(sha256_file(step2 / name) == digest for name, digest in sums.items())
    with (step2 / "__1_0.distcp").open("r+b") as handle:  # the second rank's file
        handle.seek(100)
        handle.write(os.urandom(4096))
    (run / "damaged").touch()
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    return errors


def test_two_ranks_hash_their_own_files_and_agree_on_the_checkpoint_to_load(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), "2", str(tmp_path / "rdzv"), str(run), out],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, out in ((0, str(tmp_path / "rank0.json")), (1, str(tmp_path / "rank1.json")))
    ]
    try:
        errors = damage_when_saved(run, workers)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    step1 = run / "checkpoints" / "step-00000001"
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text())["chosen"] for r in (0, 1)]
    assert seen == [str(step1), str(step1)]
    assert "checkpoint step 2 is damaged: __1_0.distcp" in errors[0]
    assert "is damaged" not in errors[1]  # said once, by the first rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000001",
        "step-00000002.damaged",
    ]
