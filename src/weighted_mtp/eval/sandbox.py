"""Run untrusted code samples in confined processes, several at a time.

The evaluator starts one worker process (`sandbox_worker.py`) per parallel slot, in its own
session, with a scrubbed environment and no inherited descriptors. Each worker forks every
sample into a confined child (own session, rlimits, empty private folder, unprivileged user
when running as root, the HumanEval harness's reliability guard) and answers with one
outcome. A worker that dies (a sample killed it) or stops answering is replaced and the
sample counts as an error, so the evaluator itself always survives. What this does and does
not protect against is listed in the README ("Execution sandbox").
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from weighted_mtp.errors import UsageError

WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
RESULTS = ("passed", "failed", "timed out", "error")
# Beyond the samples' own limits: how long the evaluator waits for a worker's answer.
WORKER_GRACE_SECONDS = 30.0
WORKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-sample limits. `timeout` is wall-clock seconds for a function sample, or for
    each test of a stdin/stdout program (a job may carry its own, e.g. a problem's limit)."""

    timeout: float = 3.0
    memory_bytes: int = 2 << 30
    file_bytes: int = 16 << 20
    nproc: int = 64
    user: str = "nobody"


@dataclass(frozen=True)
class Job:
    """A function-style program (passes by running to completion) or, with `tests`, a
    whole program run once per `(stdin, expected stdout)` pair."""

    program: str
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


def unprivileged_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root; None when already unprivileged."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(
            f"sandbox user {user!r} does not exist",
            hint="create it or choose another user; samples must not run as root",
        ) from None
    if entry.pw_uid == 0:
        raise UsageError(f"sandbox user {user!r} is root", hint="choose an unprivileged user")
    return entry.pw_uid, entry.pw_gid


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


class _Worker:
    """One sandbox worker process and the pipes to it."""

    def __init__(self, ids: tuple[int, int] | None) -> None:
        uid, gid = (str(ids[0]), str(ids[1])) if ids else ("-", "-")
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-B", str(WORKER_SCRIPT), uid, gid],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=WORKER_ENV,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )

    def ask(self, request: dict, seconds: float) -> Outcome | None:
        """The worker's answer, or None if it died or did not answer in time."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return None
        ready, _, _ = select.select([self.process.stdout], [], [], seconds)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            return None
        answer = json.loads(line)
        return Outcome(answer["result"], answer["reason"])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(
                    OSError
                ):  # a broken pipe's buffered bytes cannot be flushed
                    pipe.close()


class Sandbox:
    """`with Sandbox(workers=2) as box: outcomes = box.run_all(jobs)`."""

    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None) -> None:
        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        self.limits = limits or SandboxLimits()
        self.ids = unprivileged_ids(self.limits.user)
        # Unprivileged, samples share the user's process count: allow nproc more than now.
        self.nproc = self.limits.nproc + (0 if self.ids else processes_of_this_user())
        self.n_workers = workers
        self._idle: queue.Queue[_Worker] = queue.Queue()

    def __enter__(self) -> Sandbox:
        for _ in range(self.n_workers):
            self._idle.put(_Worker(self.ids))
        return self

    def __exit__(self, *exc_info: object) -> None:
        while not self._idle.empty():
            self._idle.get().stop()

    def worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for monitoring and tests)."""
        return [worker.process.pid for worker in list(self._idle.queue)]

    def request(self, job: Job) -> dict:
        limits = asdict(self.limits)
        limits.pop("user")
        return {
            **limits,
            "nproc": self.nproc,
            "kind": "stdio" if job.tests is not None else "function",
            "program": job.program,
            "tests": [list(test) for test in job.tests or ()],
            "timeout": job.timeout or self.limits.timeout,
            "memory_bytes": job.memory_bytes or self.limits.memory_bytes,
        }

    def run(self, job: Job) -> Outcome:
        request = self.request(job)
        budget = request["timeout"] * max(1, len(request["tests"])) + WORKER_GRACE_SECONDS
        worker = self._idle.get()
        try:
            outcome = worker.ask(request, budget)
            if outcome is None:
                worker.stop()
                worker = _Worker(self.ids)
                return Outcome("error", "the sandbox worker died or hung (the sample killed it?)")
            return outcome
        finally:
            self._idle.put(worker)

    def run_all(
        self, jobs: Sequence[Job], advance: Callable[[float], None] | None = None
    ) -> list[Outcome]:
        """Outcomes in the order of `jobs`, computed `workers` at a time."""

        def one(job: Job) -> Outcome:
            outcome = self.run(job)
            if advance is not None:
                advance(1)
            return outcome

        with ThreadPoolExecutor(max_workers=self.n_workers) as pool:
            return list(pool.map(one, jobs))
