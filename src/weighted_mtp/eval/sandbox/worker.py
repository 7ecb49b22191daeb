"""The sandbox's worker: `python -I -B -m weighted_mtp.eval.sandbox.worker CONFIG`.

The evaluator keeps one worker per parallel slot and talks to it in JSON lines on
stdin/stdout: first the worker's `{"ready": protections}` (or `{"fatal": why}`), then one
answer per job. Standard library (and this package's other sandbox modules) only.

Processes of one slot:

- the worker (PID 1 of the PID, mount, network, IPC and UTS namespaces bubblewrap made
  for its slot, on a private read-only root, see `sandbox.isolation`; root when the
  evaluator is, else holding CAP_SYS_ADMIN in the slot's user namespace only): reads
  jobs, hands them out, enforces the wall-clock limit and cleans up after every job;
- the zygote: forked from the worker before the worker reads its first job, so it starts
  with no job in its memory; the worker sends it only a sample's limits and folder
  (`SAMPLE_KEYS`) and its program as a file (a memfd) that only the sample's process
  reads, never a test, a prelude or an expected output, so neither its live objects nor
  its freed heap, nor any sample forked from it, can hold one (or another sample's
  program). It forks the process of every sample and reports its end: its wait status, its CPU
  time and whether it was confined before the sample's code ran (a pipe the sample's
  process writes to and closes before it runs any of it), so the sandbox's own failures
  are never read from an exit status or a signal a sample can choose;
- the judge: forked from the worker, confined once as the slot's judge identity and not
  dumpable; the only process that receives tests (`JUDGE_KEYS`). For each function-style
  job (HumanEval, MBPP) it runs the trusted tests and
  calls the sample's functions through a socket that carries plain data only
  (`sandbox.judge`), and answers with the verdict. Frame introspection,
  `sys.settrace`, rigged `__eq__` and the like in the sample cannot reach it. A judge that
  misses the deadline is killed and replaced;
- a sample's process (per function-style sample, or per test of a stdin/stdout program):
  forked by the zygote, it joins the slot's cgroup where there is one (`sandbox.cgroup`:
  the memory of all its processes together is bounded) and runs the untrusted program;
  a stdin/stdout program's output goes back to the evaluator, which compares it with the
  expected output it never sent.

Samples and judges run in their own sessions, without inherited descriptors, with
resource limits (samples: RLIMIT_CPU/AS/DATA/FSIZE/NPROC/CORE), no new privileges, no
capabilities, a seccomp filter (`sandbox.seccomp`), a scrubbed environment; samples in an
empty private folder. When root, each runs under the slot's own uids (given by the
evaluator), so a sample can signal or write nothing of another sample, of its judge, or
of the worker.
"""

from __future__ import annotations

# The few modules most samples and tests use, imported once before the zygote is forked
# (speed only: samples can import anything). Each module here is memory that every fork
# of the worker copies the page tables of, so heavy ones (hashlib: 4 MB) stay out.
import bisect  # noqa: F401
import collections  # noqa: F401
import contextlib
import copy  # noqa: F401
import fcntl
import functools  # noqa: F401
import gc
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import select
import signal
import socket
import string  # noqa: F401
import sys
import time
import typing  # noqa: F401
from collections.abc import Sequence
from typing import Any, NamedTuple

from weighted_mtp.eval.sandbox import isolation as iso
from weighted_mtp.eval.sandbox.cgroup import SampleCgroup
from weighted_mtp.eval.sandbox.codec import HEADER
from weighted_mtp.eval.sandbox.judge import REASON_LIMIT, bounded, describe, judge, run_sample
from weighted_mtp.eval.sandbox.seccomp import Filter

PARKED_FDS = 1000  # kept descriptors move above this before they are renumbered from 3
JUDGE_FOLDER = "/"  # read-only for the judge; the sample's folder is the sample's alone
STDERR_TAIL = 4 << 10  # bytes of a program's stderr searched for its error
CONFINED = b"confined"  # what a sample's process says once confined, before the sample runs
ZYGOTE_GRACE = 10.0  # seconds the zygote may take to clean up after a sample
END_SLACK = 0.5  # seconds a sample that broke its channel may take to end, past its timeout
CPU_SLACK = 0.05  # seconds of measured CPU time under the limit still read as the limit
JUDGE_MEMORY = 4 << 30  # address space of the judge (it decodes the samples' values)
SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
Ids = tuple[int, int]
SECCOMP = Filter()  # built once; installed in every sample and judge process


# What the worker sends: the zygote (and so every sample) gets a job's `SAMPLE_KEYS` only,
# the judge its `JUDGE_KEYS` only; the tests never reach a process that runs a sample.
SAMPLE_KEYS = ("kind", "timeout", "memory_bytes", "file_bytes", "nproc")
JUDGE_KEYS = ("prelude", "test", "entry_points")


def cpu_limit(timeout: float) -> int:
    """RLIMIT_CPU of a sample (seconds): its wall-clock timeout + 1 s."""
    return int(timeout) + 1


def short(text: str) -> str:
    return bounded(" ".join(str(text).split()), REASON_LIMIT)


def write_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --- confinement of a sample or judge (in the forked child) --------------------------------


class Confinement(NamedTuple):
    folder: str
    ids: Ids | None
    timeout: float
    memory_bytes: int
    file_bytes: int
    nproc: int | None  # None: no process limit (the judge)
    cpu: bool = True  # RLIMIT_CPU of timeout + 1 s (not for the judge, which serves many)
    own_ipc: bool = False  # a System V IPC namespace of its own (needs root)

    def apply(self, keep: list[int]) -> None:
        """Own session; only fds 0-2 and `keep` (renumbered from 3); limits; the folder;
        the unprivileged identity; no new privileges; a scrubbed environment. With
        `own_ipc`, System V shared memory, semaphores and message queues (and POSIX message
        queues) it makes are its own, and the kernel frees them when its processes end:
        they would otherwise outlive it in the host's namespace, beyond its memory limit,
        seen by every later sample."""
        if self.own_ipc:
            iso.unshare(iso.CLONE_NEWIPC)
        os.setsid()
        parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, PARKED_FDS) for fd in keep]
        for index, fd in enumerate(parked):
            os.dup2(fd, 3 + index)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        os.closerange(3 + len(keep), max(1 << 16, soft if soft > 0 else 0))
        os.chdir(self.folder)
        limits = [
            (resource.RLIMIT_AS, self.memory_bytes),
            (resource.RLIMIT_DATA, self.memory_bytes),
            (resource.RLIMIT_FSIZE, self.file_bytes),
            (resource.RLIMIT_CORE, 0),
        ]
        if self.cpu:
            limits.append((resource.RLIMIT_CPU, cpu_limit(self.timeout)))
        if self.nproc is not None:
            limits.append((resource.RLIMIT_NPROC, self.nproc))
        for limit, value in limits:
            resource.setrlimit(limit, (value, value))
        if self.ids is not None:
            os.setgroups([])
            os.setgid(self.ids[1])
            os.setuid(self.ids[0])
        iso.prctl(iso.PR_SET_NO_NEW_PRIVS, 1)
        iso.prctl(iso.PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        iso.drop_capabilities()  # those a worker in a user namespace holds there
        if SECCOMP.available:
            SECCOMP.install()
        os.environ.clear()
        os.environ.update(SAFE_ENV, HOME=self.folder, TMPDIR=self.folder)


def null_stdio() -> None:
    for fd in (0, 1, 2):
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)


def run_program(program: str) -> None:
    """Run a whole program as `__main__` on stdin/stdout; its error goes to stderr."""
    status = 0
    try:
        exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, ("\n" + describe(exc) + "\n").encode("utf-8", "backslashreplace"))
        status = 1
    try:
        sys.stdout.flush()
    except BaseException:  # e.g. the output limit was reached
        status = status or 1
    with contextlib.suppress(BaseException):
        sys.stderr.flush()  # its last words, even without a newline
    os._exit(status)


def read_text(fd: int) -> str:
    """The whole text of the file `fd` (from its start), which is closed."""
    with os.fdopen(fd, "rb") as handle:
        return handle.read().decode("utf-8", "surrogatepass")


def sample_process(
    job: dict[str, Any], fds: list[int], started: int, ids: Ids | None, cgroup: SampleCgroup | None
) -> None:
    """The body of a sample's process (forked by the zygote); never returns. Its program is
    the file `fds[-1]` (the zygote never reads it), its channel or stdio the others. It joins
    the slot's cgroup first, while root, so every process it makes is charged there. Once
    confined it writes CONFINED to `started` and closes it, before the sample's code runs:
    a process that never said so was the sandbox's failure, whatever its exit status."""
    confinement = Confinement(
        job["folder"],
        ids,
        job["timeout"],
        job["memory_bytes"],
        job["file_bytes"],
        job["nproc"],
        own_ipc=job["own_ipc"],
    )
    try:
        if cgroup is not None:
            cgroup.join()
        program = read_text(fds.pop())  # in the cgroup: its memory is charged there
        if job["kind"] == "function":
            null_stdio()
            confinement.apply(keep=[*fds, started])
            say_confined(3 + len(fds))
            os._exit(run_sample(socket.socket(fileno=3), program))
        else:
            for target, fd in enumerate(fds):  # stdin, stdout, stderr
                os.dup2(fd, target)
            confinement.apply(keep=[started])
            say_confined(3)
            run_program(program)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"\nsandbox set-up failed: {describe(exc)}\n".encode())
    os._exit(1)


def say_confined(fd: int) -> None:
    os.write(fd, CONFINED)
    os.close(fd)


# --- messages between the worker, its zygote and its judge ---------------------------------


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    frame = HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    sock.sendall(frame[sent:])


def receive_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors sent with it; EOFError when the peer is gone."""
    head, fds, _flags, _address = socket.recv_fds(sock, HEADER.size, 8)
    if not head:
        raise EOFError
    while len(head) < HEADER.size:
        chunk = sock.recv(HEADER.size - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    (size,) = HEADER.unpack(head)
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise EOFError
        body += chunk
    return json.loads(body), fds


def wait_message(sock: socket.socket, seconds: float) -> dict[str, Any] | None:
    """The next message, or None if none came in time."""
    ready, _, _ = select.select([sock], [], [], max(seconds, 0.0))
    return receive_message(sock)[0] if ready else None


# --- the zygote ----------------------------------------------------------------------------


class Ended(NamedTuple):
    """How a sample's process ended, as the zygote saw it."""

    status: int  # its wait status
    cpu: float  # seconds of CPU time it (and the children it reaped) used
    confined: bool  # it said it was confined before the sample's code ran


class Reaper:
    """Wait statuses (and CPU seconds) of this process's children, and SIGKILL for all its
    descendants (orphans come back to it: it is their subreaper or PID 1)."""

    def __init__(self) -> None:
        self.statuses: dict[int, tuple[int, float]] = {}

    def reap(self, block: bool = False) -> bool:
        """Collect the children that ended (blocking: at least one); whether any is left."""
        flags = 0 if block else os.WNOHANG
        while True:
            try:
                pid, status, usage = os.wait4(-1, flags)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            self.statuses[pid] = (status, usage.ru_utime + usage.ru_stime)
            flags = os.WNOHANG

    @staticmethod
    def children() -> list[int]:
        pids: list[int] = []
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as handle:
                pids += [int(p) for p in handle.read().split()]
        return pids

    def kill_descendants(self) -> None:
        """Kill and reap until no child is left. Then no descendant is left either: a
        process's children become this one's before that process can be reaped."""
        for _round in range(1000):
            if not self.reap():
                return
            for pid in self.children():
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)  # its own session/group, if it leads one
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.reap(block=True)  # a killed child's end (its orphans are children now)


def zygote(sock: socket.socket, ids: Ids | None, cgroup: SampleCgroup | None) -> None:
    """Fork a sample's process per job; once it ended (or the worker said stop), kill its
    descendants and report `{"done": wait status, "cpu": s, "confined": bool, "job": n}`.
    Never returns."""
    try:
        null_stdio()  # the evaluator's pipes stay with the worker
        iso.prctl(iso.PR_SET_CHILD_SUBREAPER, 1)
        reaper = Reaper()
        gc.collect()
        gc.freeze()  # samples' collections skip (and so do not copy) the zygote's objects
        while True:
            job, fds = receive_message(sock)
            if "stop" not in job:  # a stop that crossed its job's "done" needs nothing
                run_one_sample(sock, job, fds, ids, reaper, cgroup)
    except BaseException:  # the worker is gone (or broke): so is the zygote
        os._exit(0)


def run_one_sample(
    sock: socket.socket,
    job: dict[str, Any],
    fds: list[int],
    ids: Ids | None,
    reaper: Reaper,
    cgroup: SampleCgroup | None,
) -> None:
    said, started = os.pipe()
    pid = os.fork()
    if pid == 0:
        sock.close()
        os.close(said)
        sample_process(job, fds, started, ids, cgroup)
    os.close(started)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([sock.fileno(), pidfd], [], [])
    finally:
        os.close(pidfd)
    if sock.fileno() in ready:
        receive_message(sock)  # "stop"
    reaper.kill_descendants()  # nothing can hold `started` open now
    try:
        confined = os.read(said, len(CONFINED) + 1) == CONFINED
    finally:
        os.close(said)
    status, cpu = reaper.statuses.pop(pid, (None, 0.0))
    done = {"done": status, "cpu": cpu, "confined": confined, "job": job["job"]}
    send_message(sock, done)
    reaper.statuses.clear()


# --- the judge -----------------------------------------------------------------------------


def judge_server(sock: socket.socket) -> None:
    """Judge one job per message (its channel to the sample comes with it); never returns."""
    try:
        while True:
            job, (fd,) = receive_message(sock)  # JUDGE_KEYS: the prelude and tests
            with socket.socket(fileno=fd) as channel:
                verdict = judge(channel, job["prelude"], job["test"], job["entry_points"])
            send_message(sock, verdict)
    except BaseException:  # the worker is gone, or it killed us
        os._exit(0)


# --- the worker ----------------------------------------------------------------------------


def unreadable_for(ids: Ids) -> list[str]:
    """The interpreter's directories that `ids` cannot list (probed in a child)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setgroups([])
        os.setgid(ids[1])
        os.setuid(ids[0])
        bad = [p for p in iso.interpreter_paths() if not os.access(p, os.R_OK | os.X_OK)]
        os.write(write_fd, json.dumps(bad).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return list(json.loads(data or b"[]"))


def as_ids(value: Any) -> Ids | None:
    return (int(value[0]), int(value[1])) if value else None


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.sample_ids = as_ids(config["sample"])
        self.judge_ids = as_ids(config["judge"])
        self.isolated = False
        self.cgroup: SampleCgroup | None = None
        cgroup_why_not = str(config["cgroup_unavailable"])
        if config["cgroup"]:
            try:  # its folders are bound into bubblewrap's root
                self.cgroup = SampleCgroup(config["cgroup"])
            except OSError as exc:
                cgroup_why_not = f"the worker cannot use its cgroup: {describe(exc)}"
        why_not = str(config["namespaces_unavailable"])
        if config["bwrap"]:  # bubblewrap made the namespaces and the root
            iso.unshare(iso.CLONE_NEWNS)  # one of its own, where it mounts each scratch
            iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
            self.isolated, why_not = True, ""
        if os.getpid() != 1:  # orphans come back to it, as to PID 1
            iso.prctl(iso.PR_SET_CHILD_SUBREAPER, 1)
        if not self.isolated:
            for ids in (self.sample_ids, self.judge_ids):
                unreadable = unreadable_for(ids) if ids is not None else []
                if unreadable:
                    raise RuntimeError(
                        f"the sandbox's user cannot read {unreadable[0]} and private mount "
                        f"namespaces are unavailable ({why_not}): samples could not import "
                        "the standard library. Allow bubblewrap its namespaces, or install "
                        "Python where every user can read it"
                    )
        self.protections = {
            "own_identities": self.sample_ids is not None,
            "separate_judge": True,
            "pid_namespace": self.isolated,
            "network_namespace": self.isolated,
            "ipc_namespace": self.isolated,
            "private_root": self.isolated,
            "namespaces_unavailable": "" if self.isolated else why_not,
            "sample_cgroup": self.cgroup is not None,
            "cgroup_unavailable": "" if self.cgroup is not None else cgroup_why_not,
            "user_namespace": bool(config["user_namespace"]),
            "seccomp": SECCOMP.available,
            "seccomp_unavailable": SECCOMP.why,
        }
        owner = self.sample_ids or (os.getuid(), os.getgid())
        self.scratch = iso.Scratch(owner) if self.isolated else None
        self.reaper = Reaper()
        self.jobs = 0
        self.folder = ""  # of the job in progress
        self.sample_done = True
        # Forked before the first job is read (`main` reads none before this returns): the
        # zygote's memory, and so every sample's, starts without a test in it.
        self.zygote_socket, theirs = socket.socketpair()
        self.zygote_pid = os.fork()
        if self.zygote_pid == 0:
            self.zygote_socket.close()
            zygote(theirs, self.sample_ids, self.cgroup)
        theirs.close()
        self.judge_socket: socket.socket | None = None
        self.judge_pid = 0

    def close(self) -> None:
        """The evaluator is done: let the zygote and the judge end, and wait for them."""
        self.zygote_socket.close()
        self.stop_judge()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.zygote_pid, 0)

    # --- the judge ---

    def start_judge(self) -> socket.socket:
        """The judge's process: confined once as the slot's judge identity, not dumpable
        (so a sample of the same user cannot read its memory)."""
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            try:
                mine.close()
                self.zygote_socket.close()
                null_stdio()
                confinement = Confinement(
                    JUDGE_FOLDER,
                    self.judge_ids,
                    0,
                    JUDGE_MEMORY,
                    1 << 20,
                    None,
                    cpu=False,
                    own_ipc=self.isolated,
                )
                confinement.apply(keep=[theirs.fileno()])
                iso.prctl(iso.PR_SET_DUMPABLE, 0)
            except BaseException:
                os._exit(1)
            judge_server(socket.socket(fileno=3))
        theirs.close()
        self.judge_socket, self.judge_pid = mine, pid
        return mine

    def stop_judge(self) -> None:
        if self.judge_socket is None:
            return
        self.judge_socket.close()
        self.judge_socket = None
        with contextlib.suppress(OSError):
            os.kill(self.judge_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.judge_pid, 0)

    # --- per job ---

    def prepare(self, job: dict[str, Any]) -> str:
        """A fresh empty folder owned by the sample's identity."""
        if self.scratch is not None:
            return self.scratch.prepare(4 * job["file_bytes"])
        import tempfile

        folder = tempfile.mkdtemp(prefix="wmtp-sandbox-")
        if self.sample_ids is not None:
            os.chown(folder, *self.sample_ids)
        return folder

    def start_sample(self, job: dict[str, Any], fds: list[int]) -> None:
        """Hand the zygote the sample's spec: the job's SAMPLE_KEYS and where it runs, with
        `fds` and the program as a file; nothing else of the job (no test, prelude or
        stdin: stdin is one of `fds`)."""
        self.jobs += 1
        spec = {key: job[key] for key in SAMPLE_KEYS}
        message = {**spec, "folder": self.folder, "job": self.jobs, "own_ipc": self.isolated}
        program = os.memfd_create("program", os.MFD_CLOEXEC)
        try:
            write_all(program, job["program"].encode("utf-8", "surrogatepass"))
            os.lseek(program, 0, os.SEEK_SET)
            send_message(self.zygote_socket, message, [*fds, program])
        finally:
            os.close(program)
        self.sample_done = False

    def sample_ended(self, seconds: float) -> Ended | None:
        """How the sample ended once the zygote reports it within `seconds`, else None
        (it is still running, or it ended without a wait status)."""
        deadline = time.monotonic() + seconds
        while not self.sample_done:
            message = wait_message(self.zygote_socket, deadline - time.monotonic())
            if message is None:
                return None
            if message.get("job") == self.jobs:
                self.sample_done = True
                status = message.get("done")
                if not isinstance(status, int):
                    return None
                return Ended(status, float(message["cpu"]), message["confined"] is True)
        return None

    def stop_sample(self) -> Ended | None:
        """Kill what is left of the sample; how it ended (None if it never did)."""
        if self.sample_done:
            return None
        status = self.sample_ended(0)  # it may have just ended
        if self.sample_done:
            return status
        send_message(self.zygote_socket, {"stop": True})
        status = self.sample_ended(ZYGOTE_GRACE)
        if not self.sample_done:
            raise RuntimeError("the zygote did not clean up in time")
        return status

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's answer. What is left of the sample is cleaned up by `finish`, after
        the answer went out (while the evaluator reads it and sends the next job)."""
        self.folder = self.prepare(job)
        if self.cgroup is not None:
            self.cgroup.settle()  # after `prepare`, which may unmount the last scratch
            self.cgroup.limit.set(job["memory_bytes"])  # the cgroup is empty now
            self.cgroup.new_oom_kills()  # one after the last answer was not this sample's
        answer = self.run_stdio(job) if job["kind"] == "stdio" else self.run_function(job)
        if self.cgroup is not None and self.cgroup.new_oom_kills():
            together = f"its processes together used over {job['memory_bytes']} bytes"
            return {"result": "error", "reason": f"out of memory: {together}"}
        return answer

    def finish(self) -> None:
        """Kill the sample's processes, remove its folder (a private root's scratch is
        checked, and renewed if need be, by the next `prepare`), reap; RuntimeError if this
        worker cannot go on (its zygote died or hangs, or a process outlived the sweep in
        the slot's cgroup)."""
        self.stop_sample()
        if self.cgroup is not None:
            self.cgroup.wait_empty()
            self.cgroup.new_oom_kills()  # what happened after its verdict is not the next one's
        if self.scratch is None and self.folder:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = ""
        self.reaper.reap()
        if self.zygote_pid in self.reaper.statuses:
            raise RuntimeError("the zygote died")

    def run_function(self, job: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + job["timeout"]
        judge = self.judge_socket or self.start_judge()
        judge_end, sample_end = socket.socketpair()
        try:
            self.start_sample(job, [sample_end.fileno()])
            spec = {key: job[key] for key in JUDGE_KEYS}
            send_message(judge, spec, [judge_end.fileno()])
        finally:
            sample_end.close()
            judge_end.close()
        try:
            verdict = wait_message(judge, deadline - time.monotonic())
        except (EOFError, OSError, ValueError):
            self.stop_judge()
            return {"result": "error", "reason": "the judge failed"}
        if verdict is None:
            self.stop_judge()  # it may be waiting on the sample: a fresh one for the next job
            return {"result": "timed out", "reason": f"no result within {job['timeout']:g} s"}
        if verdict.get("sample_gone"):
            # It closed its channel: its end (if it ended) is on its way. One that lives
            # on is waited for until its timeout only, then killed by `finish`.
            end = self.sample_ended(max(deadline - time.monotonic(), END_SLACK))
            if end is None:
                return {"result": "error", "reason": "the sample closed its channel to the tests"}
            return refine(verdict, end, job["timeout"])
        return {"result": verdict["result"], "reason": verdict["reason"]}

    def run_stdio(self, job: dict[str, Any]) -> dict[str, Any]:
        stdin = os.memfd_create("stdin", os.MFD_CLOEXEC)
        outputs = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("stdout", "stderr")]
        try:
            write_all(stdin, job["stdin"].encode("utf-8", "surrogateescape"))
            os.lseek(stdin, 0, os.SEEK_SET)
            self.start_sample(job, [stdin, *outputs])
            end = self.sample_ended(job["timeout"])
            if end is None:
                return {"result": "timed out", "reason": f"over {job['timeout']:g} s"}
            stdout = os.pread(outputs[0], job["file_bytes"], 0)
            stderr_size = os.fstat(outputs[1]).st_size
            stderr = os.pread(outputs[1], STDERR_TAIL, max(0, stderr_size - STDERR_TAIL))
            return program_result(end, job["timeout"], stdout, stderr, job["file_bytes"])
        finally:
            for fd in (stdin, *outputs):
                os.close(fd)


def sandbox_failed(end: Ended) -> bool:
    return not end.confined


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def how_it_ended(end: Ended, timeout: float) -> tuple[str, str]:
    """Result and reason of a sample's process that ended (not cleanly). Only what the
    sample cannot choose counts: the sandbox's failure is the zygote's word (never an exit
    status), and a signal means its CPU time limit only when its measured CPU time reached
    that limit (a signal it sent itself is just a signal)."""
    if sandbox_failed(end):
        return "error", "sandbox failure: the sample's process could not be confined"
    code = os.waitstatus_to_exitcode(end.status)
    limit = cpu_limit(timeout)
    if code < 0 and end.cpu >= limit - CPU_SLACK:
        return "timed out", f"CPU time limit ({limit} s)"
    if code < 0:
        return "error", f"killed by {signal.Signals(-code).name}"
    return "error", f"exit status {code}"


def refine(verdict: dict[str, Any], end: Ended, timeout: float) -> dict[str, Any]:
    """A verdict that the sample vanished, told more precisely by how it ended."""
    exited = os.waitstatus_to_exitcode(end.status) in (0, 1)  # or reported its own error
    if exited and not sandbox_failed(end):
        return {"result": verdict["result"], "reason": verdict["reason"]}
    result, reason = how_it_ended(end, timeout)
    return {"result": result, "reason": reason}


def program_result(
    end: Ended, timeout: float, stdout: bytes, stderr: bytes, file_bytes: int
) -> dict[str, Any]:
    code = os.waitstatus_to_exitcode(end.status)
    if len(stdout) >= file_bytes and not sandbox_failed(end):
        return {"result": "error", "reason": f"output over {file_bytes} bytes"}
    if code != 0 or sandbox_failed(end):
        lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        result, reason = how_it_ended(end, timeout)
        if code > 0 and lines and not sandbox_failed(end):
            reason = short(f"{reason}: {lines[-1]}")  # what it printed, after what it did
        return {"result": result, "reason": reason}
    return {"result": "ran", "reason": "", "stdout": stdout.decode("utf-8", "replace")}


def main() -> None:
    try:
        worker = Worker(json.loads(sys.argv[1]))
    except BaseException as exc:
        write_line({"fatal": describe(exc)})
        sys.exit(1)
    write_line({"ready": worker.protections})
    for raw in sys.stdin.buffer:
        try:
            answer = worker.run(json.loads(raw))
        except Exception as exc:  # a broken job must not end the worker
            answer = {"result": "error", "reason": f"sandbox failure: {describe(exc)}"}
        write_line(answer)
        try:
            worker.finish()
        except Exception as exc:  # its zygote is gone or stuck: this worker is done
            write_line({"retired": describe(exc)})
            sys.exit(1)
    worker.close()


if __name__ == "__main__":
    main()
