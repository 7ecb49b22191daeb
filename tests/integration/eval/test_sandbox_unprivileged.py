"""One attack suite, every mode: the sandbox's attack, hostile and fidelity tests (and
the real HumanEval's 164 canonical solutions) run again here as an unprivileged user,
where the sandbox isolates each slot with bubblewrap in user namespaces instead of root's
identities, and must give the same verdicts.

The suite itself runs as root in CI, often with an interpreter other users cannot read;
`unprivileged.run_unprivileged` starts pytest as `nobody` in a view of the file system
where just the interpreter and this checkout are readable (nothing on the host changes).
Run as an ordinary user, those test files run in that mode directly and this one is
skipped."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from unprivileged import USER, run_unprivileged

CHECKOUT = Path(__file__).resolve().parents[3]
SUITE = [
    "tests/integration/eval/test_sandbox_attacks.py",
    "tests/integration/eval/test_sandbox_hostile.py",
    "tests/integration/eval/test_sandbox_fidelity.py",
    "tests/integration/eval/test_score_cli.py::test_canonical_solutions_score_1_and_pass_bodies_score_0",
]
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
PROBE = "from weighted_mtp.eval.sandbox.pool import bwrap_command; bwrap_command()"


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: those files run unprivileged already")
def test_the_attack_and_fidelity_suites_give_the_same_verdicts_unprivileged():
    probe = run_unprivileged(
        [sys.executable, "-c", PROBE], [str(CHECKOUT)], str(CHECKOUT), ENV, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces for {USER} here: {probe.stderr.strip()[-300:]}")
    scratch = tempfile.mkdtemp(prefix="wmtp-unprivileged-suite-")
    user = pwd.getpwnam(USER)
    os.chown(scratch, user.pw_uid, user.pw_gid)
    command = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider"]
    command += ["-q", "-rs", "--basetemp", f"{scratch}/tmp", *SUITE]
    try:
        done = run_unprivileged(command, [str(CHECKOUT)], str(CHECKOUT), ENV, timeout=600)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = done.stdout[-4000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    # Skipped only where a test needs root itself (its cgroups, its reserved uids).
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert not [line for line in skipped if "user namespaces" in line], skipped
    assert " passed" in summary and " failed" not in summary, summary
    print(summary.splitlines()[-1])
