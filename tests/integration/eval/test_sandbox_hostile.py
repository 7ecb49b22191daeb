"""Hostile samples are contained, scored as failures, and cannot hurt the evaluator, other
samples or files outside their folder. Every sample runs in real sandbox processes."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from unprivileged import sandbox_isolates

from weighted_mtp.eval.sandbox.pool import (
    WORKER_GRACE_SECONDS,
    Job,
    Outcome,
    Sandbox,
    SandboxLimits,
)

ISOLATED = sandbox_isolates()
SLEEP_MARK = "7777.25"  # argv of the spawner's children, to find leftovers
# How long past its timeout a sample may keep its slot busy: the worker's kill and clean-up
# (a few tens of milliseconds on a quiet machine) plus scheduling delays on a machine loaded
# several times over its cores. Far below the evaluator's grace, after which it gives a hung
# worker up, so a sample that held its slot until the evaluator stepped in fails the bound.
SLOT_SLACK_SECONDS = 8.0
assert SLOT_SLACK_SECONDS < WORKER_GRACE_SECONDS / 2


def run(*jobs: Job, limits: SandboxLimits | None = None) -> list[Outcome]:
    with Sandbox(2, limits) as box:
        return box.run_all(jobs)


def run_timed(job: Job, limits: SandboxLimits | None = None) -> tuple[Outcome, float]:
    """One sample's outcome and how long it kept its slot (the workers' start and stop,
    which load slows most, are not counted)."""
    with Sandbox(1, limits) as box:
        start = time.monotonic()
        outcome = box.run(job)
        return outcome, time.monotonic() - start


def test_ordinary_samples_pass_and_fail_as_written() -> None:
    passed, failed, crashed = run(
        Job("def f(x):\n    return 2 * x\nassert f(3) == 6"),
        Job("assert sum([1, 2]) == 4, 'wrong sum'"),
        Job("raise ValueError('boom')"),
    )
    assert passed.passed
    assert (failed.result, failed.reason) == ("failed", "AssertionError: wrong sum")
    assert (crashed.result, crashed.reason) == ("error", "ValueError: boom")


def test_infinite_loop_times_out_in_bounded_time() -> None:
    timeout = 1.0
    outcome, held = run_timed(Job("while True:\n    pass", timeout=timeout))
    assert outcome.result == "timed out"
    assert held < timeout + SLOT_SLACK_SECONDS, held


def test_huge_allocation_fails_without_taking_the_memory() -> None:
    (outcome,) = run(Job("block = bytearray(50 * 2**30)\nassert len(block) > 0"))
    assert (outcome.result, outcome.reason) == ("error", "MemoryError")


@pytest.mark.parametrize(
    "escape",
    ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"],
)
def test_exiting_before_the_tests_is_a_failure(escape: str) -> None:
    program = f"def f():\n    return 1\n{escape}\ndef check(c):\n    assert c() == 2\ncheck(f)"
    (outcome,) = run(Job(program))
    assert outcome.result == "error"
    assert "before the tests" in outcome.reason


@pytest.mark.parametrize("kill", ["os.kill(os.getppid(), 9)", "posix.kill(posix.getppid(), 9)"])
def test_killing_the_parent_fails_the_sample_and_the_evaluator_goes_on(kill: str) -> None:
    hostile = Job(f"import os, posix\n{kill}\nimport time\ntime.sleep(5)")
    outcomes = run(hostile, Job("assert True"), hostile, Job("assert 1 == 1"))
    assert [o.passed for o in outcomes] == [False, True, False, True]


def test_a_killed_worker_is_replaced_and_its_sample_is_an_error() -> None:
    with Sandbox(1) as box:
        (victim,) = box.worker_pids()
        killer = threading.Timer(1.0, os.killpg, (victim, signal.SIGKILL))
        killer.start()
        outcome = box.run(Job("import time\ntime.sleep(4)", timeout=30))
        assert outcome.result == "error" and "worker died" in outcome.reason
        assert box.run(Job("assert True")).passed
        assert box.worker_pids() != [victim]


def _leftover_sleepers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if SLEEP_MARK in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def test_process_spawning_is_bounded_and_cleaned_up() -> None:
    """A bounded spawner (40 sleepers, never a real fork bomb): with at most 16 processes
    it cannot start them all, and none of those it started outlives the sample."""
    spawner = (
        "import posix\n"
        "started = 0\n"
        "for _ in range(40):\n"
        "    pid = posix.fork()\n"
        "    if pid == 0:\n"
        f"        posix.execv('/bin/sleep', ['sleep', '{SLEEP_MARK}'])\n"
        "    started += 1\n"
    )
    timeout = 5.0
    outcome, held = run_timed(Job(spawner, timeout=timeout), limits=SandboxLimits(nproc=16))
    assert not outcome.passed, "all 40 processes started: RLIMIT_NPROC did not bind"
    assert "BlockingIOError" in outcome.reason or "Resource temporarily" in outcome.reason
    # its sleepers (7777 s each) must not keep the slot busy: they die with the sample
    assert held < timeout + SLOT_SLACK_SECONDS, held
    assert _leftover_sleepers() == []


@pytest.mark.skipif(not ISOLATED, reason="not root, and no user namespaces here")
def test_files_outside_the_sandbox_survive(tmp_path: Path) -> None:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="wmtp-victim-"))  # world-readable, root-owned
    try:
        folder.chmod(0o755)
        victim = folder / "storage-file.txt"
        victim.write_text("precious\n")
        victim.chmod(0o644)
        before = (hashlib.sha256(victim.read_bytes()).hexdigest(), victim.stat().st_mtime_ns)
        attacks = [
            f"open({str(victim)!r}, 'w').write('gone')",
            f"import posix\nposix.unlink({str(victim)!r})",
            f"import posix\nposix.rename({str(victim)!r}, {str(victim) + '.moved'!r})",
            f"import posix\nposix.chmod({str(victim)!r}, 0o777)",
            f"open({str(folder / 'new.txt')!r}, 'w').write('planted')",
            f"import shutil\nshutil.rmtree({str(folder)!r})",
        ]
        outcomes = run(*(Job(a) for a in attacks))
        assert not any(o.passed for o in outcomes)
        after = (hashlib.sha256(victim.read_bytes()).hexdigest(), victim.stat().st_mtime_ns)
        assert after == before
        assert sorted(p.name for p in folder.iterdir()) == ["storage-file.txt"]
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_sample_runs_unprivileged_in_an_empty_folder_with_a_clean_environment() -> None:
    probe = (
        "import os\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        "assert 'WMTP_SECRET' not in os.environ, 'environment leaked'\n"
        "assert os.getuid() != 0, os.getuid()\n"
        "fds = os.listdir('/proc/self/fd')\n"
        "assert len(fds) <= 5, fds  # stdin/out/err, the result pipe, listdir's own\n"
    )
    os.environ["WMTP_SECRET"] = "x"
    try:
        (outcome,) = run(Job(probe))
    finally:
        del os.environ["WMTP_SECRET"]
    assert outcome.passed, outcome.reason


def test_stdin_stdout_programs_are_judged_on_every_test() -> None:
    adder = "a, b = map(int, input().split())\nprint(a + b)"
    tests = (("1 2\n", "3\n"), ("10 20\n", "30\n"))
    right, wrong, slow, early_exit = run(
        Job(adder, tests=tests),
        Job(adder.replace("a + b", "a + b if a < 5 else 0"), tests=tests),
        Job("while True:\n    pass", tests=tests, timeout=1.0),
        Job("print(3)\nexit(0)", tests=tests),
    )
    assert right.passed
    assert (wrong.result, wrong.reason) == ("failed", "test 2 of 2: wrong answer")
    assert slow.result == "timed out"
    assert (early_exit.result, early_exit.reason) == ("failed", "test 2 of 2: wrong answer")
