"""Samples that try to fake a pass, or to hurt their siblings, score as what they are.

Each attack is a real completion scored through `score_samples` (real HumanEval, the
synthetic CodeContests) or run in real sandbox workers; every one of them scored `passed`
(or took its siblings down) before the judge ran in its own process."""

from __future__ import annotations

import ast
import json
import os
import platform
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from unprivileged import sandbox_isolates

from tests.helpers import load_problems
from tests.integration.eval.test_sandbox_fidelity import (  # the MBPP-format fixture
    MBPP_TASKS,
    in_test_split,
    mbpp_layout,  # noqa: F401
)
from weighted_mtp.eval.problems import problem_job
from weighted_mtp.eval.sandbox import seccomp
from weighted_mtp.eval.sandbox.pool import Job, Outcome, Sandbox, unconfined_warning
from weighted_mtp.eval.scoring import results_path, score_samples

ISOLATED = sandbox_isolates()
NOT_ISOLATED = "not root, and no user namespaces here (the sandbox refuses to start)"
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
    task_id = next(t for t, p in problems.items() if p.tests["base"].cases)
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
    task_id = next(t for t, p in problems.items() if p.tests["base"].cases)
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


@pytest.mark.skipif(not ISOLATED, reason=NOT_ISOLATED)
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
import os, stat, sys
here = os.stat('.')
assert here.st_atime_ns == here.st_mtime_ns, 'the folder was read before'
assert os.listdir('.') == [], os.listdir('.')
assert 'kept' not in os.listdir('/tmp'), os.listdir('/tmp')
assert os.listdir('/dev/shm') == [], os.listdir('/dev/shm')
# passable by the judge's uid only where the interpreter's folders are bound in it again
bound = any(os.path.realpath(p).startswith('/tmp/') for p in (sys.prefix, *sys.path) if p)
assert stat.S_IMODE(os.stat('/tmp').st_mode) == (0o711 if bound else 0o700)
assert stat.S_IMODE(here.st_mode) == 0o700
assert os.listxattr('.') == [], os.listxattr('.')
def reachable(pid):  # a process this one could trace (hidden or out of reach otherwise)
    try:
        open(f'/proc/{pid}/environ').close()
    except OSError:
        return False
    return True
others = [p for p in os.listdir('/proc') if p.isdigit() and p != str(os.getpid())]
assert [p for p in others if reachable(p)] == [], others
"""


@pytest.mark.skipif(not ISOLATED, reason=NOT_ISOLATED)
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
    """Ids of the host's shared memory segments owned by the sandbox's uids (as root, its
    reserved ones; else this user's)."""
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = rows[0].split()
    ids = []
    for row in rows[1:]:
        fields = dict(zip(header, row.split(), strict=False))
        if int(fields["uid"]) >= 0x70000000 or int(fields["uid"]) == os.getuid() != 0:
            ids.append(int(fields["shmid"]))
    return ids


@pytest.mark.skipif(not ISOLATED, reason=NOT_ISOLATED)
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


# --- tests never reach a sample ------------------------------------------------------------
#
# Before the zygote received a job's program only, it received the whole job: a sample could
# read its tests from its callers' frames (`job`), from `gc`, or from the zygote's heap it
# inherited (its own job's and earlier jobs'). The stealers below are generic: they know the
# name of the function the tests call (the prompt shows it) and nothing else of the task.

# Finds strings of tests in `scopes`, parses their asserts `f(args) == expected` and answers
# every call from that table (None where it found nothing).
STEALER_TABLE = textwrap.dedent(
    """
    import ast as _ast, gc as _gc, sys as _sys

    def _strings(value, found, depth=0):
        if isinstance(value, str):
            if "assert" in value or "check(" in value:
                found.append(value)
        elif depth < 5 and isinstance(value, dict):
            for item in list(value.values()):
                _strings(item, found, depth + 1)
        elif depth < 5 and isinstance(value, (list, tuple, set, frozenset)):
            for item in list(value):
                _strings(item, found, depth + 1)

    def _table(texts):
        table = {}
        for text in texts:
            try:
                tree = _ast.parse(text)
            except Exception:
                continue
            for node in _ast.walk(tree):
                if (
                    isinstance(node, _ast.Compare)
                    and len(node.ops) == 1
                    and isinstance(node.ops[0], _ast.Eq)
                    and isinstance(node.left, _ast.Call)
                ):
                    try:
                        args = tuple(_ast.literal_eval(a) for a in node.left.args)
                        table[repr(args)] = _ast.literal_eval(node.comparators[0])
                    except Exception:
                        pass
        return table
    """
)

STEALER_BY_FRAMES = STEALER_TABLE + textwrap.dedent(
    """
    def _stolen():
        found = []
        frame = _sys._getframe(1)
        while frame is not None:
            _strings(frame.f_locals, found)
            _strings(frame.f_globals, found)
            frame = frame.f_back
        return _table(found)
    """
)

STEALER_BY_GC = STEALER_TABLE + textwrap.dedent(
    """
    def _stolen():
        found = []
        for thing in _gc.get_objects():
            if isinstance(thing, (dict, list, tuple)):
                _strings(thing, found, depth=4)
        return _table(found)
    """
)


def stealer(kind: str, names: list[str]) -> str:
    """A program defining each of `names` as a function that answers from stolen tests."""
    functions = "".join(
        f"def {name}(*args):\n    return _stolen().get(repr(args))\n" for name in names
    )
    return kind + functions


STEALERS = {"frames": STEALER_BY_FRAMES, "gc": STEALER_BY_GC}


@pytest.mark.parametrize("kind", sorted(STEALERS))
def test_a_stealer_fails_every_humaneval_task(eval_layout, kind):
    """All 164 real HumanEval tasks: the stealer's answers come from nothing; the canonical
    solutions, in the same run, all pass (so the tests ran)."""
    problems = load_problems(eval_layout, "humaneval")
    rows = {
        json.loads(line)["task_id"]: json.loads(line)
        for line in (eval_layout.dataset("humaneval").raw / "HumanEval.jsonl")
        .read_text()
        .splitlines()
    }
    assert len(problems) == 164
    jobs = []
    for task_id, problem in problems.items():
        (entry_point,) = problem.tests["base"].entry_points
        # The prompt's function gets a body; the stealer follows at module level.
        jobs.append(
            problem_job(problem, "base", "    pass\n" + stealer(STEALERS[kind], [entry_point]))
        )
        jobs.append(problem_job(problem, "base", rows[task_id]["canonical_solution"]))
    with Sandbox(2) as box:
        outcomes = box.run_all(jobs)
    stolen = [o for o in outcomes[0::2] if o.result == "passed"]
    assert outcomes[1::2] == [Outcome("passed")] * 164
    assert stolen == [], f"{len(stolen)} of 164 passed by stealing"


# Scans the whole readable address space of its process for needles. The needles are
# embedded shifted by one (each byte + 1) and memory is shifted before it is searched, so
# the program itself never holds a needle's text; CANARY's text is made at run time, to
# show the scan finds what is there.
MEMORY_SCAN = textwrap.dedent(
    """
    import ctypes, re
    SHIFT = bytes((b + 1) % 256 for b in range(256))
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/mem is ours again
    canary = "".join(chr(c) for c in [99, 97, 110, 97, 114, 121, 45, 113, 122, 106]) * 3

    def scan():
        needles = {name: bytes.fromhex(text) for name, text in NEEDLES.items()}
        longest = max(len(n) for n in needles.values())
        found = set()
        with open("/proc/self/maps") as maps:
            regions = maps.read().splitlines()
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            for line in regions:
                fields = line.split()
                if "r" not in fields[1] or fields[-1] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                at = start
                while at < end:
                    size = min(1 << 20, end - at)
                    try:
                        mem.seek(at)
                        chunk = mem.read(size + longest).translate(SHIFT)
                    except OSError:
                        break
                    for name, needle in needles.items():
                        if needle in chunk:
                            found.add(name)
                    at += size
        return sorted(found)
    """
)


def shifted_hex(text: str) -> str:
    return bytes((b + 1) % 256 for b in text.encode()).hex()


def memory_scanner(needles: dict[str, str]) -> str:
    table = {name: shifted_hex(text) for name, text in needles.items()}
    return f"NEEDLES = {table!r}\n" + MEMORY_SCAN


def first_assert(test: str) -> str:
    return next(line.strip() for line in test.splitlines() if "assert" in line and len(line) > 30)


def test_no_test_is_anywhere_in_a_samples_memory(eval_layout):
    """One slot runs 40 HumanEval tasks' canonical solutions (their tests go to that slot's
    judge), then a sample whose own tests hold a secret: reading every readable byte of its
    own process, it finds neither its tests nor any of the earlier tasks', nor the earlier
    samples' programs (and it does find the canary it made itself)."""
    problems = list(load_problems(eval_layout, "humaneval").values())[:40]
    raw = (eval_layout.dataset("humaneval").raw / "HumanEval.jsonl").read_text().splitlines()
    solutions = {
        json.loads(line)["task_id"]: json.loads(line)["canonical_solution"] for line in raw
    }
    secret = "secret-" + os.urandom(12).hex()
    needles = {p.task_id: first_assert(p.tests["base"].program) for p in problems}
    mark = os.urandom(12).hex()
    marks = {p.task_id: f"program of {p.task_id} {mark}" for p in problems}
    needles.update({f"program of {task}": mark for task, mark in marks.items()})
    needles["own test"] = secret
    needles["own test line"] = "assert found == ['canary'], found"
    needles["canary"] = "canary-qzj" * 3
    jobs = [
        problem_job(p, "base", f"{solutions[p.task_id]}    # {marks[p.task_id]}\n")
        for p in problems
    ]
    test = f"SECRET = {secret!r}\nfound = scan()\nassert found == ['canary'], found\n"
    scanner = Job(memory_scanner(needles), test=test)
    with Sandbox(1) as box:
        outcomes = box.run_all([*jobs, scanner])
    assert outcomes[:-1] == [Outcome("passed")] * len(jobs)
    assert outcomes[-1] == Outcome("passed"), outcomes[-1].reason


def called_names(test: str) -> list[str]:
    """The functions the asserts of `test` call and compare (what MBPP's prompt shows)."""
    names = set()
    for node in ast.walk(ast.parse(test)):
        call = node.left if isinstance(node, ast.Compare) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            names.add(call.func.id)
    return sorted(names)


@pytest.mark.parametrize("kind", sorted(STEALERS))
def test_a_stealer_fails_every_mbpp_task(mbpp_layout, kind):  # noqa: F811
    """The MBPP-format tasks of the fidelity suite (setup code, classes, `math.isclose`,
    `sys.getsizeof`): the stealer fails each, the references pass each."""
    problems = load_problems(mbpp_layout, "mbpp")
    references = {f"mbpp/{in_test_split(t['task_id'])}": t["code"] for t in MBPP_TASKS}
    assert sorted(problems) == sorted(references)
    jobs = []
    for task_id, problem in problems.items():
        names = called_names(problem.tests["base"].program)
        jobs += [
            problem_job(problem, "base", stealer(STEALERS[kind], names)),
            problem_job(problem, "base", references[task_id]),
        ]
    with Sandbox(2) as box:
        outcomes = box.run_all(jobs)
    assert outcomes[1::2] == [Outcome("passed")] * len(problems)
    stolen = [task for task, o in zip(problems, outcomes[0::2], strict=True) if o.passed]
    assert stolen == []


# --- names of the tests are the judge's; reasons are the sandbox's ---------------------------
#
# ATTACKS: each a sample and the verdict it must get, run beside an honest sibling that must
# pass. `reason_lacks`: words of a reason the sample tried to choose for itself.

ISCLOSE_TEST = "assert math.isclose(area(2), 12.566, rel_tol=1e-3)"
GETSIZEOF_TEST = "assert tuple_size((1, 'a', 2.5)) == sys.getsizeof((1, 'a', 2.5))"
CORRECT_AREA = "import math\ndef area(r):\n    return math.pi * r * r\n"
CORRECT_TUPLE_SIZE = "import sys\ndef tuple_size(t):\n    return sys.getsizeof(t)\n"
FAKE_MATH = (
    "class _Math:\n    pi = 3\n    def isclose(self, *args, **kwargs):\n        return True\n"
    "math = _Math()\ndef area(r):\n    return 0\n"
)
FAKE_MATH_MODULE = (
    "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *a, **k: True\n"
    "def area(r):\n    return 0\n"
)
FAKE_SYS = (
    "class _Sys:\n    def getsizeof(self, value):\n        return 1\n"
    "sys = _Sys()\ndef tuple_size(t):\n    return 1\n"
)
SELF_SIGXCPU = "import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)\n"
SELF_SIGXCPU_IN_CALL = "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGXCPU)\n"
EXIT_125 = "import os\nos._exit(125)\n"
PROTOCOL_GARBAGE = (
    "import socket, time\nsocket.socket(fileno=3).sendall(b'\\xff' * 64)\ntime.sleep(60)\n"
)
CHANNEL_CLOSED_THEN_SLEEP = "import os, time\nos.close(3)\ntime.sleep(60)\n"
SANDBOX_WORDS = "sandbox failure: the sample's process could not be confined"
RAISES_THE_SANDBOX_WORDS = (  # an exception class named "sandbox failure"
    "def f(x):\n    raise type('sandbox failure', (Exception,), {})(\n"
    '        "the sample\'s process could not be confined")\n'
)
PRINTS_THE_SANDBOX_WORDS = f"import sys\nsys.stderr.write({SANDBOX_WORDS!r})\nsys.exit(3)\n"


@dataclass(frozen=True)
class Attack:
    job: Job
    result: str  # its verdict
    reason_has: str = ""
    reason_lacks: tuple[str, ...] = ()


NOT_THE_SANDBOX = ("sandbox", "confine")
ATTACKS = {
    "fake-math-object": Attack(Job(FAKE_MATH, test=ISCLOSE_TEST), "failed"),
    "fake-math-module": Attack(Job(FAKE_MATH_MODULE, test=ISCLOSE_TEST), "failed"),
    "fake-sys-object": Attack(Job(FAKE_SYS, test=GETSIZEOF_TEST), "failed"),
    "exit-125": Attack(Job(EXIT_125, test="assert True"), "error", "125", NOT_THE_SANDBOX),
    "exit-125-program": Attack(Job(EXIT_125, tests=(("", ""),)), "error", "125", NOT_THE_SANDBOX),
    "sigxcpu-to-itself": Attack(
        Job(SELF_SIGXCPU, test="assert True"), "error", "SIGXCPU", ("CPU time",)
    ),
    "sigxcpu-to-itself-in-a-call": Attack(
        Job(SELF_SIGXCPU_IN_CALL, test="assert f(1) == 1"), "error", "SIGXCPU", ("CPU time",)
    ),
    "sigxcpu-to-itself-program": Attack(
        Job(SELF_SIGXCPU, tests=(("", ""),)), "error", "SIGXCPU", ("CPU time",)
    ),
    "protocol-garbage": Attack(
        Job(PROTOCOL_GARBAGE, test="assert True", timeout=2.0), "error", "protocol"
    ),
    "exception-named-like-the-sandbox": Attack(
        Job(RAISES_THE_SANDBOX_WORDS, test="assert f(1) == 1"),
        "error",
        "Exception: the sample's process",
        ("sandbox failure",),
    ),
    "stderr-like-the-sandbox": Attack(
        Job(PRINTS_THE_SANDBOX_WORDS, tests=(("", ""),)),
        "error",
        f"test 1 of 1: exit status 3: {SANDBOX_WORDS}",
    ),
    "channel-closed-then-sleeps": Attack(
        Job(CHANNEL_CLOSED_THEN_SLEEP, test="assert True", timeout=2.0),
        "error",
        "closed its channel",
    ),
}
HONEST = Job("def f(x):\n    return x + 1\n", test="assert f(1) == 2")
SLACK_SECONDS = 1.5  # past a sample's timeout, for its verdict to come back


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_gets_its_own_verdict_and_no_more_time(name):
    attack = ATTACKS[name]
    timeout = attack.job.timeout or 3.0
    with Sandbox(2) as box:
        start = time.monotonic()
        outcome, *honest = box.run_all([attack.job, HONEST, HONEST])
        seconds = time.monotonic() - start
    assert outcome.result == attack.result, outcome
    assert attack.reason_has in outcome.reason, outcome
    assert not any(word in outcome.reason for word in attack.reason_lacks), outcome
    assert honest == [Outcome("passed")] * 2
    assert seconds < timeout + SLACK_SECONDS


@pytest.mark.parametrize(
    ("program", "test"), [(CORRECT_AREA, ISCLOSE_TEST), (CORRECT_TUPLE_SIZE, GETSIZEOF_TEST)]
)
def test_tests_using_a_module_they_do_not_import_pass_correct_code(program, test):
    with Sandbox(1) as box:
        assert box.run_all([Job(program, test=test)]) == [Outcome("passed")]


# MBPP-format task 14 of the fidelity fixture: its tests use `close` and `hq`, which the
# reference solution imports (`from math import isclose as close`, `import heapq as hq`).
FAKE_IMPORTED_NAMES = (
    "close = lambda *args, **kwargs: True\n"
    "class hq:\n    nsmallest = staticmethod(lambda n, items: [4])\n"
    "def area(r):\n    return 4\n"
)


def test_names_the_reference_imports_are_the_judges_in_the_tests(mbpp_layout):  # noqa: F811
    """A sample that binds the names the tests take from the reference's imports to its
    own objects fails; the reference itself passes."""
    task = next(t for t in MBPP_TASKS if t["task_id"] == 14)
    task_id = f"mbpp/{in_test_split(14)}"
    problem = load_problems(mbpp_layout, "mbpp", only={task_id})[task_id]
    with Sandbox(1) as box:
        outcomes = box.run_all(
            [
                problem_job(problem, "base", task["code"]),
                problem_job(problem, "base", FAKE_IMPORTED_NAMES),
            ]
        )
    assert outcomes[0] == Outcome("passed")
    assert outcomes[1].result == "failed", outcomes[1]


NUMBERS = seccomp.ARCHES[platform.machine()][1]
# A key in every keyring a sample can name (session, user, user-session), for a later
# sample of the same slot (the same uid) to find; and what it finds.
PLANT_KEY = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
planted = []
for keyring in (-3, -4, -5):
    key = libc.syscall({NUMBERS["add_key"]}, b"user", b"wmtp-leak", b"secret", 6, keyring)
    planted.append((key, ctypes.get_errno()))
def f():
    return planted
"""
FIND_KEY = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found = libc.syscall({NUMBERS["request_key"]}, b"user", b"wmtp-leak", None, 0)
errno = ctypes.get_errno()
with open("/proc/keys") as listing:
    visible = listing.read()
def f():
    return found, errno, visible
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_no_keyring_entry_survives_into_the_next_sample(workers):
    """The kernel keeps keyrings per uid, beyond a sample's processes (and beyond an
    evaluation): no sample can put a key anywhere, nor see one."""
    jobs = [
        Job(PLANT_KEY, test="assert any(key > 0 for key, _ in f()), f()"),
        Job(FIND_KEY, test="assert f()[0] > 0 or 'wmtp-leak' in f()[2], f()"),
        Job(PLANT_KEY, test="assert all(err == 1 for _, err in f()), f()"),
        Job(FIND_KEY, test="assert f()[:2] == (-1, 1) and f()[2] == '', f()"),
    ]
    with Sandbox(workers) as box:
        outcomes = box.run_all(jobs)
    assert [o.result for o in outcomes] == ["failed", "failed", "passed", "passed"], outcomes


# System calls the seccomp filter denies (EPERM; clone3 ENOSYS so that libc uses clone),
# made with arguments that would otherwise succeed or fail otherwise; and what still works.
PROBES = f"""
import ctypes, os, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(name, *args):
    result = libc.syscall(NUMBERS[name], *args)
    return result, ctypes.get_errno()
NUMBERS = {dict(NUMBERS)!r}
child = os.fork()
if child == 0:
    import time
    time.sleep(5)
    os._exit(0)
denied = {{
    "ptrace": errno_of("ptrace", 16, child, 0, 0),  # PTRACE_ATTACH to its own child
    "keyctl": errno_of("keyctl", 0, -3, 1),  # the session keyring's id, made if need be
    "unshare": errno_of("unshare", 0x10000000),  # a user namespace: no privilege needed
    "clone": errno_of("clone", 0x10000000 | 17, 0, 0, 0, 0),  # the same, by clone
    "userfaultfd": errno_of("userfaultfd", 0),
    "perf_event_open": errno_of("perf_event_open", 0, 0, -1, -1, 0),
    "clone3": errno_of("clone3", 0, 0),
}}
os.kill(child, 9)
os.waitpid(child, 0)
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
ran = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True)
def f():
    return denied, ran.stdout
"""
DENIED = {name: (-1, 1) for name in ("ptrace", "keyctl", "unshare", "clone")}
DENIED |= {"userfaultfd": (-1, 1), "perf_event_open": (-1, 1), "clone3": (-1, 38)}
# The judge runs under the same filter: the tests themselves try a user namespace.
JUDGE_PROBE = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall({NUMBERS["unshare"]}, 0x10000000) == -1 and ctypes.get_errno() == 1
denied, output = f()
assert denied == {DENIED!r}, denied
assert output == "42\\n", output
"""


def test_seccomp_denies_tracing_keyrings_and_namespaces_to_samples_and_judges():
    with Sandbox(1) as box:
        (outcome,) = box.run_all([Job(PROBES, test=JUDGE_PROBE)])
        assert box.protections["seccomp"] is True
        assert unconfined_warning(box.protections) == ""  # root's or bubblewrap's isolation
    assert outcome.passed, outcome.reason
