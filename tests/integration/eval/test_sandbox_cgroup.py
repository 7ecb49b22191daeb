"""A sample's processes together get one sample's memory: the slot's cgroup stops a
sample whose children each stay under the per-process limits, as that sample's verdict,
while the other slot and the next sample on the same slot go on. Real sandbox processes,
real cgroups (root only; skipped where the kernel lets root make none)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from unprivileged import run_unprivileged

from weighted_mtp.eval.sandbox import cgroup
from weighted_mtp.eval.sandbox.pool import Job, Sandbox, SandboxLimits

MiB = 1 << 20
LIMIT = 256 * MiB  # per sample here, and per process (RLIMIT_AS)
# Four children of 128 MiB each, alive together: each under RLIMIT_AS, 512 MiB in all.
CHILDREN = """
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = b"x" * (128 << 20)
        time.sleep(1.0)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""
HOG_PROGRAM = Job(CHILDREN + "print('done')", tests=(("", "done"),), timeout=20)
HOG_FUNCTION = Job(CHILDREN + "def f():\n    return 1\n", test="assert f() == 1", timeout=20)
DOUBLE = Job("def f(x):\n    return 2 * x\n", test="assert f(3) == 6")
ECHO = Job("print(int(input()) * 2)", tests=(("21", "42"),))
BIG = Job("block = b'x' * (200 << 20)\nprint('ok')", tests=(("", "ok"),), timeout=20)


def cgroups_unavailable() -> str:
    """Why this process cannot make the sandbox's cgroups ('' when it can)."""
    if os.geteuid() != 0:
        return "cgroups need root"
    try:
        group = cgroup.create(f"wmtp-sandbox-probe-{os.getpid()}", 8, LIMIT)
    except OSError as exc:
        return f"no cgroups here: {cgroup.describe_failure(exc)}"
    group.remove()
    return ""


WHY_NOT = cgroups_unavailable()
needs_cgroups = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)


def wait_empty(folders: list[str], seconds: float = 10.0) -> bool:
    """Whether every cgroup in `folders` is empty within `seconds` (the worker cleans up
    after a sample once its verdict went out)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(not Path(f, "cgroup.procs").read_text().split() for f in folders):
            return True
        time.sleep(0.05)
    return False


@needs_cgroups
@pytest.mark.parametrize("hog", [HOG_PROGRAM, HOG_FUNCTION], ids=["program", "function"])
def test_a_sample_over_its_memory_in_all_its_processes_is_stopped_alone(hog: Job) -> None:
    limits = SandboxLimits(memory_bytes=LIMIT)
    with Sandbox(2, limits) as box:
        assert box.protections["sample_cgroup"] is True
        assert box.protections["cgroup_unavailable"] == ""
        workers = sorted(box.worker_pids())
        outcomes = box.run_all([hog, DOUBLE, ECHO, DOUBLE, ECHO, DOUBLE])
        assert sorted(box.worker_pids()) == workers  # no worker died or was replaced
    stopped, *others = outcomes
    assert stopped.result == "error"
    assert f"out of memory: its processes together used over {LIMIT} bytes" in stopped.reason
    assert all(outcome.passed for outcome in others), others


@needs_cgroups
def test_each_job_gets_its_own_memory_limit_for_all_its_processes() -> None:
    """A job's own limit (CodeContests: the problem's) holds for the sample as a whole,
    raised and lowered again from one job to the next on the same slot."""
    three = CHILDREN.replace("range(4)", "range(3)") + "print('done')"  # 384 MiB in all
    roomy = Job(three, tests=(("", "done"),), timeout=20, memory_bytes=768 * MiB)
    tight = Job(three, tests=(("", "done"),), timeout=20)
    with Sandbox(1, SandboxLimits(memory_bytes=LIMIT)) as box:
        outcomes = box.run_all([roomy, tight, roomy, tight])
    assert [o.result for o in outcomes] == ["passed", "error", "passed", "error"], outcomes
    assert f"over {LIMIT} bytes" in outcomes[1].reason


WITHOUT_NAMESPACES = f"""
import json
from weighted_mtp.eval.sandbox.pool import Job, Sandbox, SandboxLimits
hog, double, echo = {HOG_PROGRAM!r}, {DOUBLE!r}, {ECHO!r}
limits = SandboxLimits(memory_bytes={LIMIT}, namespaces=False)
with Sandbox(2, limits) as box:
    outcomes = [[o.result, o.reason] for o in box.run_all([hog, double, echo, double])]
print(json.dumps({{"protections": box.protections, "outcomes": outcomes}}))
"""


@needs_cgroups
def test_without_namespaces_the_cgroup_still_stops_it() -> None:
    """Root without namespaces (a container that refuses unshare): pids are the host's.
    Run where the sandbox's uids can read the interpreter (it may live under /root)."""
    checkout = str(Path(__file__).resolve().parents[3])
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    command = [sys.executable, "-c", WITHOUT_NAMESPACES]
    done = run_unprivileged(command, [checkout], "/", env, timeout=120, stay_root=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["protections"]["sample_cgroup"] and not report["protections"]["pid_namespace"]
    (stopped, stopped_reason), *others = report["outcomes"]
    assert stopped == "error" and "out of memory" in stopped_reason
    assert [result for result, _ in others] == ["passed"] * 3, others


@needs_cgroups
def test_without_the_cgroup_the_same_sample_stays_under_every_process_limit() -> None:
    """What the cgroup closes: per-process limits alone let the sample take 512 MiB."""
    limits = SandboxLimits(memory_bytes=LIMIT, cgroups=False)
    with Sandbox(1, limits) as box:
        (outcome,) = box.run_all([HOG_PROGRAM])
        assert box.protections["sample_cgroup"] is False
        assert box.protections["cgroup_unavailable"] == "turned off"
    assert outcome.passed


@needs_cgroups
def test_samples_run_in_their_slot_cgroup_which_goes_with_the_sandbox() -> None:
    with Sandbox(2) as box:
        folders = box.cgroup_folders()
        assert folders and all(os.path.isdir(folder) for folder in folders)
        names = sorted({os.path.basename(folder) for folder in folders})
        assert names == [f"wmtp-sandbox-{os.getpid()}-{slot}" for slot in (0, 1)]
        prefix = f"/wmtp-sandbox-{os.getpid()}-"
        where = Job(
            "def f():\n    return open('/proc/self/cgroup').read()\n",
            test=f"lines = [l for l in f().splitlines() if ':memory:' in l or l.startswith('0::')]"
            f"\nassert any({prefix!r} in l for l in lines), lines",
        )
        outcomes = box.run_all([where] * 4)
        assert all(outcome.passed for outcome in outcomes), outcomes
        # Between samples nothing is left in them: not the sample's processes, and
        # never the worker, its zygote or its judge, which are alive.
        assert wait_empty(folders)
        assert all(pid > 0 for pid in box.worker_pids())
    assert not any(os.path.exists(folder) for folder in folders)


@needs_cgroups
def test_memory_a_sample_left_charged_does_not_count_against_the_next() -> None:
    """Scratch files (tmpfs pages are charged to the cgroup that wrote them) and System V
    shared memory (freed with the sample's IPC namespace, late) of one sample, then a
    sample that needs most of the limit, on the same slot, several times over."""
    scratch = Job(
        "for i in range(3):\n"
        "    for where in ('/tmp/sample', '/dev/shm'):\n"
        "        with open(f'{where}/fill{i}', 'wb') as out:\n"
        "            out.write(b'x' * (15 << 20))\n"
        "print('ok')",
        tests=(("", "ok"),),
    )
    shared = Job(
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]\n"
        "libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "segment = libc.shmget(0, 150 << 20, 0o1000 | 0o600)\n"
        "assert segment >= 0, ctypes.get_errno()\n"
        "ctypes.memset(libc.shmat(segment, None, 0), 1, 150 << 20)\n"
        "print('ok')",
        tests=(("", "ok"),),
    )
    with Sandbox(1, SandboxLimits(memory_bytes=LIMIT)) as box:
        if not box.protections["private_root"]:
            pytest.skip("scratch and IPC namespaces of their own need the private root")
        outcomes = box.run_all([scratch, BIG, shared, BIG] * 3)
    assert all(outcome.passed for outcome in outcomes), outcomes


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox makes cgroups only as root")
def test_without_cgroups_samples_run_and_the_record_says_why(monkeypatch, tmp_path) -> None:
    """No cgroup file system mounted (simulated): the evaluation runs as before."""
    empty = tmp_path / "mountinfo"
    empty.write_text("")
    monkeypatch.setattr(cgroup, "MOUNTINFO", str(empty))
    with Sandbox(2) as box:
        outcomes = box.run_all(
            [DOUBLE, ECHO, Job("def f(x):\n    return x\n", test="assert f(3) == 6")]
        )
        assert box.cgroup_folders() == []
        assert box.protections["sample_cgroup"] is False
        why = box.protections["cgroup_unavailable"]
    assert [o.result for o in outcomes] == ["passed", "passed", "failed"]
    assert why == "no cgroup hierarchy with the memory controller"


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox makes cgroups only as root")
def test_a_cgroup_layout_not_understood_leaves_the_evaluation_running(monkeypatch) -> None:
    def unreadable(*_args: object) -> cgroup.SlotCgroup:
        raise ValueError("invalid literal for int() with base 10: 'max'")

    monkeypatch.setattr(cgroup, "create", unreadable)
    with Sandbox(1) as box:
        (outcome,) = box.run_all([DOUBLE])
        why = box.protections["cgroup_unavailable"]
    assert outcome.passed, outcome
    assert why == "unexpected cgroup file contents: invalid literal for int() with base 10: 'max'"


def joined_child(joined: cgroup.SampleCgroup) -> int:
    """A child in the cgroup (joined as a sample's process does), sleeping."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        joined.join()
        os.write(write_fd, b"in")
        time.sleep(60)
        os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 2) == b"in"
    os.close(read_fd)
    return pid


@needs_cgroups
def test_the_worker_sees_each_process_in_the_cgroup_and_closing_kills_them() -> None:
    """Cgroup v1 hands a reader of an open `cgroup.procs` the list it read before for a
    second: the worker's check must not miss a process that joined since."""
    group = cgroup.create(f"wmtp-sandbox-test-{os.getpid()}", 8, LIMIT)
    try:
        worker_side = cgroup.SampleCgroup(group.worker_config())
        assert worker_side.is_empty()
        pid = joined_child(worker_side)
        assert not worker_side.is_empty()
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert worker_side.is_empty()
        left = joined_child(worker_side)  # for closing to kill
    finally:
        group.remove()
    assert not any(os.path.exists(folder) for folder in group.folders)
    _, status = os.waitpid(left, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
