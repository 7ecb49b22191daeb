"""Samples that try to fake a pass, or to hurt their siblings, score as what they are.

Each attack is a real completion scored through `score_samples` (real HumanEval, the
synthetic CodeContests) or run in real sandbox workers; every one of them scored `passed`
(or took its siblings down) before the judge ran in its own process."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from weighted_mtp.eval.sandbox import Job, Sandbox
from weighted_mtp.eval.scoring import results_path, score_samples
from weighted_mtp.eval.tasks import load_problems

AS_ROOT = os.geteuid() == 0
WRONG_BODY = "    return True\n"  # HumanEval/0 with this body fails its third assert

# Reads the harness's nonce and result descriptor from its caller's frame and reports a pass.
FRAME_FORGERY = WRONG_BODY + textwrap.dedent(
    """
    import json, os, sys
    def _forge():
        frame = sys._getframe(0)
        while frame is not None:
            seen = frame.f_locals
            if "nonce" in seen and "result_fd" in seen:
                line = json.dumps({"status": "passed", "nonce": seen["nonce"]}) + "\\n"
                os.write(seen["result_fd"], line.encode())
                os._exit(0)
            frame = frame.f_back
    _forge()
    """
)

# Replaces the test function `check` with a no-op just before it is called.
TRACE_SWAP = WRONG_BODY + textwrap.dedent(
    """
    import sys
    def _noop(candidate):
        return None
    def _tracer(frame, event, arg):
        if frame.f_globals.get("check") not in (None, _noop):
            frame.f_globals["check"] = _noop
        return _tracer
    sys.settrace(_tracer)
    sys._getframe().f_trace = _tracer
    """
)

RIGGED_EQ = textwrap.indent(
    textwrap.dedent(
        """
        class Anything:
            def __eq__(self, other):
                return True
            __hash__ = object.__hash__
        return Anything()
        """
    ),
    "    ",
)

RIGGED_INT = textwrap.indent(
    textwrap.dedent(
        """
        class Anything(int):
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        return Anything(0)
        """
    ),
    "    ",
)

# A stdin/stdout program that prints the expected output it finds in its callers' frames.
EXPECTED_OUTPUT_THEFT = textwrap.dedent(
    """
    import gc, sys
    found = None
    frame = sys._getframe(0)
    while frame is not None and found is None:
        found = frame.f_locals.get("expected")
        frame = frame.f_back
    if found is None:
        for thing in gc.get_objects():
            if isinstance(thing, dict) and "tests" in thing and thing.get("tests"):
                found = thing["tests"][0][1]
                break
    print(found if isinstance(found, str) else "nothing found")
    """
)


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def scored(layout, dataset: str, path: Path) -> list[dict]:
    score_samples(layout, dataset, path, ks=(1,), partial=True)
    return [json.loads(line) for line in results_path(path).read_text().splitlines()]


@pytest.mark.parametrize(
    "completion",
    [FRAME_FORGERY, TRACE_SWAP, RIGGED_EQ, RIGGED_INT],
    ids=["frame-introspection", "settrace-swaps-check", "rigged-eq", "rigged-int-eq"],
)
def test_a_wrong_humaneval_completion_cannot_fake_a_pass(eval_layout, tmp_path, completion):
    path = write_samples(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "HumanEval/0", "completion": completion, "sample_id": 0},
            {"task_id": "HumanEval/0", "completion": WRONG_BODY, "sample_id": 1},
        ],
    )
    attack, plain_wrong = scored(eval_layout, "humaneval", path)
    assert plain_wrong["result"] == "failed"
    assert attack["result"] in ("failed", "error"), attack


def test_a_codecontests_program_cannot_read_the_expected_output(eval_layout, tmp_path):
    problems = load_problems(eval_layout, "codecontests", "test")
    task_id = next(t for t, p in problems.items() if p.tests)
    path = write_samples(
        tmp_path / "samples.jsonl", [{"task_id": task_id, "completion": EXPECTED_OUTPUT_THEFT}]
    )
    (row,) = scored(eval_layout, "codecontests", path)
    assert row["result"] in ("failed", "error"), row


@pytest.mark.parametrize(
    ("completion", "reason_part"),
    [
        ("    raise ValueError('\\ud800')\n", "ValueError"),
        ("    raise ValueError('a\\x00b')\n", "ValueError"),
        ("    raise ValueError('x' * 10**8)\n", "ValueError"),
        (
            "    import sys\n    block = b'x' * 2**20\n    for _ in range(1024):\n"
            "        sys.stdout.buffer.write(block)\n"
            "    return True\n",
            "AssertionError",
        ),
    ],
    ids=["lone-surrogate", "nul", "100-MB-message", "1-GB-printed"],
)
def test_any_text_a_sample_produces_is_that_samples_bounded_verdict(
    eval_layout, tmp_path, completion, reason_part
):
    path = write_samples(
        tmp_path / "samples.jsonl",
        [
            {"task_id": "HumanEval/2", "completion": completion, "sample_id": 0},
            {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n", "sample_id": 1},
        ],
    )
    bad, good = scored(eval_layout, "humaneval", path)
    assert good["result"] == "passed"
    assert bad["result"] in ("failed", "error")
    assert reason_part in bad["reason"] and len(bad["reason"]) <= 400
    results_path(path).read_bytes().decode("utf-8")  # the file is valid UTF-8 throughout


def test_a_program_printing_a_gigabyte_is_one_bounded_error(eval_layout, tmp_path):
    problems = load_problems(eval_layout, "codecontests", "test")
    task_id = next(t for t, p in problems.items() if p.tests)
    flood = "import sys\nblock = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(block)\n"
    path = write_samples(tmp_path / "samples.jsonl", [{"task_id": task_id, "completion": flood}])
    (row,) = scored(eval_layout, "codecontests", path)
    assert row["result"] == "error" and len(row["reason"]) <= 400, row


def for_a_while(action: str) -> str:
    """A program that repeats `action` for 2.5 s. It uses `posix`, which is `os` without
    the HumanEval harness's reliability guard (the previous sandbox applied it)."""
    body = textwrap.indent(textwrap.dedent(action).strip(), "    ")
    return (
        "import os, posix, time\nend = time.time() + 2.5\nwhile time.time() < end:\n"
        f"{body}\n    time.sleep(0.01)\n"
    )


KILL_EVERYONE = for_a_while(
    """
    try:
        posix.kill(-1, 9)
    except OSError:
        pass
    """
)

KILL_WHAT_PROC_SHOWS = for_a_while(
    """
    for name in posix.listdir('/proc'):
        if name.isdigit() and int(name) != posix.getpid():
            try:
                posix.kill(int(name), 9)
            except OSError:
                pass
    """
)

WRITE_INTO_OTHERS = for_a_while(
    """
    mine = posix.getcwd()
    for top in {'/tmp', os.path.dirname(mine)}:
        try:
            names = posix.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            if path != mine and os.path.isdir(path):
                try:
                    with open(os.path.join(path, 'planted'), 'w') as handle:
                        handle.write('x')
                except OSError:
                    pass
    """
)

# A correct sample that takes a while and checks nobody wrote into its folder.
VICTIM = """
import os, time
time.sleep(1.5)
assert os.listdir('.') == [], os.listdir('.')
"""


@pytest.mark.skipif(not AS_ROOT, reason="per-sample identities need root (see the docs page)")
@pytest.mark.parametrize(
    "attack",
    [KILL_EVERYONE, KILL_WHAT_PROC_SHOWS, WRITE_INTO_OTHERS],
    ids=["kill-minus-1", "kill-all-in-proc", "write-into-sibling-folders"],
)
def test_a_sample_cannot_touch_its_siblings(attack):
    jobs = [Job(attack, timeout=10.0)] + [Job(VICTIM, timeout=10.0) for _ in range(3)]
    with Sandbox(4) as box:
        outcomes = box.run_all(jobs)
    assert [o.result for o in outcomes[1:]] == ["passed"] * 3, outcomes


# Everything a sample can leave behind in its slot: files in each writable folder (one
# written and deleted again), changed modes, an extended attribute, an access time, a
# process still running.
LITTER = """
import contextlib, os, posix, time
open('kept', 'w').write('x')
open('/tmp/kept', 'w').write('x')
open('/dev/shm/kept', 'w').write('x')
open('gone', 'w').write('x')
posix.unlink('gone')
os.mkdir('sub')
with contextlib.suppress(OSError):  # tmpfs without user extended attributes
    os.setxattr('.', 'user.mark', b'1')
os.listdir('.')
posix.chmod('/tmp', 0o777)
posix.chmod('.', 0o755)
if posix.fork() == 0:
    posix.setsid()
    time.sleep(30)
"""

# A sample that only looks: it changes its folder's access time and nothing else.
LOOKER = "import os\nos.listdir('.')\nos.listdir('/tmp')\nos.listdir('/dev/shm')\n"

# Run right after another sample of the same slot: the scratch must be as if new.
FRESH = """
import os, stat
here = os.stat('.')
assert here.st_atime_ns == here.st_mtime_ns, 'the folder was read before'
assert os.listdir('.') == [], os.listdir('.')
assert 'kept' not in os.listdir('/tmp'), os.listdir('/tmp')
assert os.listdir('/dev/shm') == [], os.listdir('/dev/shm')
assert stat.S_IMODE(os.stat('/tmp').st_mode) == 0o700
assert stat.S_IMODE(here.st_mode) == 0o700
assert os.listxattr('.') == [], os.listxattr('.')
assert [p for p in os.listdir('/proc') if p.isdigit()] == [str(os.getpid())], os.listdir('/proc')
"""


@pytest.mark.skipif(not AS_ROOT, reason="the per-sample scratch tmpfs needs the private root")
def test_what_a_sample_leaves_is_gone_for_the_next_sample_of_its_slot():
    """One slot, so every sample follows the previous one in the same namespaces and on
    the same mounts: files, modes, attributes, access times and processes of a sample are
    gone when the next starts, whether its scratch was renewed or reused."""
    jobs = [FRESH, LITTER, FRESH, LOOKER, FRESH, FRESH, LITTER, LOOKER, FRESH]
    with Sandbox(1) as box:
        assert box.protections["private_root"], box.protections
        outcomes = box.run_all([Job(program) for program in jobs])
    assert [o.result for o in outcomes] == ["passed"] * len(jobs), outcomes


# A System V shared memory segment outlives its process: in the host's IPC namespace it
# would hold memory beyond the sample's limit and be visible to every later sample.
LEAVES_SHARED_MEMORY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
segment = libc.shmget(0, 1 << 20, 0o1000 | 0o666)  # IPC_PRIVATE, IPC_CREAT, rw for all
assert segment >= 0, ctypes.get_errno()
"""
SEES_NO_SHARED_MEMORY = """
with open('/proc/sysvipc/shm') as table:
    rows = table.read().splitlines()[1:]
assert rows == [], rows
"""


def sandbox_segments() -> list[int]:
    """Ids of the host's shared memory segments owned by the sandbox's reserved uids."""
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = rows[0].split()
    ids = []
    for row in rows[1:]:
        fields = dict(zip(header, row.split(), strict=False))
        if int(fields["uid"]) >= 0x70000000:
            ids.append(int(fields["shmid"]))
    return ids


@pytest.mark.skipif(not AS_ROOT, reason="own IPC namespaces need root")
def test_a_samples_shared_memory_is_freed_with_it_and_unseen_by_the_next():
    before = set(sandbox_segments())
    try:
        with Sandbox(1) as box:
            assert box.protections["ipc_namespace"], box.protections
            jobs = [LEAVES_SHARED_MEMORY, SEES_NO_SHARED_MEMORY]
            outcomes = box.run_all([Job(program) for program in jobs])
        assert [o.result for o in outcomes] == ["passed", "passed"], outcomes
        assert set(sandbox_segments()) <= before
    finally:
        import ctypes

        libc = ctypes.CDLL(None)
        for segment in set(sandbox_segments()) - before:  # what a failing run leaked
            libc.shmctl(segment, 0, None)  # IPC_RMID
