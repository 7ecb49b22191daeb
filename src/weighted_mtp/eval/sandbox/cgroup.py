"""A cgroup per sandbox slot: one sample's processes together get the memory of one.

RLIMIT_AS and RLIMIT_NPROC bound each process of a sample, not the sample: 64 processes
of 2 GiB each would be 128 GiB, and the kernel's OOM killer would then pick other samples,
the evaluator or whatever else the machine runs. So where root may create cgroups, each
slot gets one under the evaluator's own cgroup (cgroup v2: `memory.max`, `memory.swap.max`
0, `pids.max`, `memory.oom.group`; cgroup v1: `memory.limit_in_bytes`,
`memory.memsw.limit_in_bytes` where the kernel accounts swap, and `pids.max` where a pids
hierarchy is mounted). Each sample's process joins its slot's cgroup while still root,
before it forks anything, so all its descendants are charged together; the zygote, the
worker and the judge stay outside (an OOM kill there ends the sample only).

The evaluator (`create`, `SlotCgroup`) makes and removes the cgroups; the worker
(`SampleCgroup`) holds descriptors of its slot's cgroup, whose folders are bound into its
bubblewrap root: to join, to set each job's memory limit while the cgroup is empty, to
check that it is empty between samples, and to count OOM kills. Standard library only:
the worker imports this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass

NAME_PREFIX = "wmtp-sandbox"
PROC_CGROUP = "/proc/self/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
REMOVE_SECONDS = 5.0  # how long closing waits for the last killed tasks to leave
EMPTY_SECONDS = 1.0  # how long a worker waits for a finished sample's cgroup to empty
SETTLE_SECONDS = 1.0  # how long it waits for memory the kernel frees after a sample's end
SETTLE_SLACK = 4 << 20  # memory that cannot be reclaimed a sample may find charged
# memory.stat's memory that reclaim cannot free without swap (v2 names, then v1's)
UNRECLAIMABLE = ("anon", "shmem", "rss")


@dataclass(frozen=True)
class Place:
    """Where this process's cgroup is, for one controller."""

    version: int  # 1 or 2
    folder: str  # this process's cgroup directory in that hierarchy
    top: bool  # the top of what this process sees of the hierarchy (no parent to use)


def _unescape(field: str) -> str:
    """A path of /proc/self/mountinfo (spaces and the like are written as octal escapes)."""
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root, mount point, super options) of every cgroup file system mounted."""
    found = []
    with open(MOUNTINFO) as handle:
        for line in handle:
            head, _, tail = line.partition(" - ")
            fields, after = head.split(), tail.split()
            if len(fields) >= 5 and len(after) >= 3 and after[0] in ("cgroup", "cgroup2"):
                options = set(after[2].split(","))
                found.append((after[0], _unescape(fields[3]), _unescape(fields[4]), options))
    return found


def _place(version: int, path: str, mounts: list[tuple[str, str, str, set[str]]]) -> Place | None:
    """Cgroup `path` in one of `mounts` (one whose root holds it)."""
    for _fstype, root, point, _options in mounts:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            inner = path[len(root) :].strip("/")
            return Place(version, os.path.join(point, inner).rstrip("/"), not inner)
    return None


def locate(controller: str) -> Place | None:
    """This process's cgroup for `controller` (memory or pids): in cgroup v2 where that
    hierarchy offers the controller, else in its cgroup v1 hierarchy, else None."""
    with open(PROC_CGROUP) as handle:
        lines = [line.rstrip("\n").split(":", 2) for line in handle if line.count(":") >= 2]
    mounts = _mounts()
    for hierarchy, _controllers, path in lines:
        if hierarchy == "0":
            place = _place(2, path, [m for m in mounts if m[0] == "cgroup2"])
            if place is not None and controller in _words(place.folder + "/cgroup.controllers"):
                return place
    for _hierarchy, controllers, path in lines:
        if controller in controllers.split(","):
            place = _place(1, path, [m for m in mounts if m[0] == "cgroup" and controller in m[3]])
            if place is not None:
                return place
    return None


def _words(path: str) -> set[str]:
    try:
        with open(path) as handle:
            return set(handle.read().split())
    except OSError:
        return set()


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _why(exc: OSError) -> str:
    return f"{exc.filename or ''}: {os.strerror(exc.errno or 0)}".lstrip(": ")


def _v2_parent(place: Place, controllers: tuple[str, ...]) -> str:
    """Where to make a cgroup v2 child with `controllers`: below this process's cgroup if
    they can be enabled there, else next to it. Cgroup v2 allows no controller below a
    cgroup that holds processes (except the root), and the evaluator is one of those:
    then its parent, which has them enabled for its children (that is how the evaluator's
    cgroup offers them) and, by that rule, holds no process, takes the slots' cgroups,
    within whatever limits it and its ancestors set."""
    enabled = _words(place.folder + "/cgroup.subtree_control")
    missing = [name for name in controllers if name not in enabled]
    if not missing:
        return place.folder
    try:
        _write(place.folder + "/cgroup.subtree_control", " ".join("+" + n for n in missing))
        return place.folder
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
    parent = os.path.dirname(place.folder)
    if not place.top and set(controllers) <= _words(parent + "/cgroup.subtree_control"):
        return parent
    raise OSError(
        errno.EBUSY,
        f"cgroup v2 enables no controller below {place.folder}, which holds processes, "
        "and no parent of it offers one",
    )


def _make(parent: str, name: str) -> str:
    """A new cgroup under `parent`, its name `name` or `name-N` if that one is taken."""
    for attempt in range(100):
        folder = f"{parent}/{name}" + (f"-{attempt}" if attempt else "")
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(errno.EEXIST, "no free cgroup name", f"{parent}/{name}")


def _members(folder: str) -> list[int]:
    with open(folder + "/cgroup.procs") as handle:
        return [int(pid) for pid in handle.read().split() if pid != "0"]


def kill_members(folder: str) -> None:
    """SIGKILL every process in cgroup `folder`: with `cgroup.kill` (v2) atomically, else
    one by one through pidfds, each signalled only if its pid is still listed once the
    pidfd pins it (so a pid reused by another process is never signalled)."""
    if os.path.exists(folder + "/cgroup.kill"):
        with contextlib.suppress(OSError):
            _write(folder + "/cgroup.kill", "1")
        return
    pidfds: dict[int, int] = {}
    try:
        for pid in _members(folder):
            with contextlib.suppress(OSError):
                pidfds[pid] = os.pidfd_open(pid)
        for pid in set(pidfds) & set(_members(folder)):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfds[pid], signal.SIGKILL)
    except OSError:
        pass  # the cgroup is gone
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


@dataclass
class SlotCgroup:
    """One slot's cgroup: a folder per hierarchy (one in v2; memory and pids in v1)."""

    version: int
    memory: str  # the folder with the memory controller
    pids: str | None  # the folder with the pids controller (the same one in v2)
    memory_bytes: int = 0  # the limit it was made with

    @property
    def folders(self) -> list[str]:
        return list(dict.fromkeys(f for f in (self.memory, self.pids) if f))

    @property
    def join_files(self) -> list[str]:
        """What a process writes 0 to to join: v1's `tasks` (moving only the writing
        thread, which in a process just forked is the process, takes no global lock),
        else `cgroup.procs` (that lock's writer side waits for an RCU grace period, ~10 ms
        here, unless another migration happened in the last few milliseconds)."""
        return [join_file(folder) for folder in self.folders]

    @property
    def limit_files(self) -> list[str]:
        """The memory limit's files, the plain limit first (v1 with swap accounting: the
        memory + swap limit too, which must never be below the plain one)."""
        if self.version == 2:
            return [self.memory + "/memory.max"]
        files = [self.memory + "/memory.limit_in_bytes"]
        if os.path.exists(self.memory + "/memory.memsw.limit_in_bytes"):
            files.append(self.memory + "/memory.memsw.limit_in_bytes")
        return files

    def worker_config(self) -> dict[str, object]:
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        return {
            "folders": self.folders,
            "join": self.join_files,
            "limits": self.limit_files,
            "memory_bytes": self.memory_bytes,
            "events": f"{self.memory}/{events}",
            "stat": f"{self.memory}/memory.stat",
        }

    def kill(self) -> None:
        for folder in self.folders:
            kill_members(folder)

    def remove(self) -> None:
        """Kill what is left in it and remove it (a cgroup goes once its tasks are gone;
        memory still charged to it, such as page cache, no longer holds it)."""
        deadline = time.monotonic() + REMOVE_SECONDS
        for folder in reversed(self.folders):
            while True:
                self.kill()
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        break  # left for the machine's owner: it is empty or dying
                    time.sleep(0.01)


def create(name: str, nproc: int, memory_bytes: int) -> SlotCgroup:
    """A new slot cgroup named `name` (or `name-N`) under this process's own cgroups,
    limited to `nproc` tasks and `memory_bytes`; OSError (with the reason) where the
    kernel does not let this process make one."""
    memory = locate("memory")
    if memory is None:
        raise OSError(errno.ENOENT, "no cgroup hierarchy with the memory controller")
    pids = locate("pids")
    created: list[str] = []
    try:
        if memory.version == 2:
            wanted = ("memory", "pids") if pids == memory else ("memory",)
            folder = _make(_v2_parent(memory, wanted), name)
            created.append(folder)
            group = SlotCgroup(2, folder, folder if pids == memory else None)
            for file, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if os.path.exists(f"{folder}/{file}"):
                    _write(f"{folder}/{file}", value)
        else:
            folder = _make(memory.folder, name)
            created.append(folder)
            group = SlotCgroup(1, folder, None)
        if pids is not None and group.pids is None:
            parent = _v2_parent(pids, ("pids",)) if pids.version == 2 else pids.folder
            group.pids = _make(parent, name)
            created.append(group.pids)
        if group.pids is not None:
            _write(group.pids + "/pids.max", str(nproc))
        limit = MemoryLimit(group.limit_files)
        try:
            limit.set(memory_bytes)
        finally:
            limit.close()
        group.memory_bytes = memory_bytes
        _probe(group)
    except OSError:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    return group


class MemoryLimit:
    """Sets a cgroup's memory limit (with swap where the kernel accounts it, so none of it
    goes to swap) through descriptors, so the worker can once /sys is hidden."""

    def __init__(self, files: list[str], value: int = 0) -> None:
        self.fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in files]
        self.folder_fd = os.open(os.path.dirname(files[0]), os.O_PATH | os.O_CLOEXEC)
        self.value = value  # the limit in force (0: as the kernel made it, unlimited)

    def set(self, memory_bytes: int) -> None:
        """To be called while no process is in the cgroup."""
        if memory_bytes == self.value:
            return
        fds = list(reversed(self.fds)) if 0 < self.value < memory_bytes else self.fds
        for fd in fds:
            try:
                os.write(fd, str(memory_bytes).encode())
            except OSError as exc:  # v1: below what is charged (page cache of earlier ones)
                if exc.errno != errno.EBUSY:
                    raise
                self._force_empty()
                os.write(fd, str(memory_bytes).encode())
        self.value = memory_bytes

    def _force_empty(self) -> None:
        fd = os.open("memory.force_empty", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.folder_fd)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in (*self.fds, self.folder_fd):
            os.close(fd)


def join_file(folder: str) -> str:
    tasks = folder + "/tasks"
    return tasks if os.path.exists(tasks) else folder + "/cgroup.procs"


def _probe(group: SlotCgroup) -> None:
    """Check that a process can join the cgroup (a child joins and exits)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            for path in group.join_files:
                _write(path, "0")
        except OSError as exc:
            os.write(write_fd, _why(exc).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as handle:
        said = handle.read().decode("utf-8", "replace")
    os.waitpid(pid, 0)
    if said:
        raise OSError(errno.EPERM, f"cannot join it: {said}")


def describe_failure(exc: OSError | ValueError) -> str:
    """One line saying why a cgroup could not be made."""
    if isinstance(exc, ValueError):  # a cgroup file this code does not read as expected
        return f"unexpected cgroup file contents: {exc}"
    return _why(exc) if exc.filename else (exc.strerror or str(exc))


class SampleCgroup:
    """The worker's side of its slot's cgroup: descriptors opened before /sys is hidden."""

    def __init__(self, config: dict[str, object]) -> None:
        folders, join = config["folders"], config["join"]
        assert isinstance(folders, list) and isinstance(join, list)
        flags = os.O_CLOEXEC
        self.join_fds = [os.open(path, os.O_WRONLY | flags) for path in join]
        self.folder_fds = [os.open(f, os.O_PATH | os.O_DIRECTORY | flags) for f in folders]
        self.events_fd = os.open(str(config["events"]), os.O_RDONLY | flags)
        self.stat_fd = os.open(str(config["stat"]), os.O_RDONLY | flags)
        limits, memory_bytes = config["limits"], config["memory_bytes"]
        assert isinstance(limits, list) and isinstance(memory_bytes, int)
        self.limit = MemoryLimit(limits, memory_bytes)
        self.oom_kills_seen = self.oom_kills()
        self.floor = 0  # unreclaimable memory that did not go away when waited for

    def join(self) -> None:
        """Move the calling process (a sample's, still root and single-threaded) into the
        cgroup."""
        for fd in self.join_fds:
            os.write(fd, b"0")

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took from this cgroup so far."""
        for line in os.pread(self.events_fd, 4096, 0).decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def new_oom_kills(self) -> bool:
        """Whether an OOM kill happened in the cgroup since the last call."""
        seen, self.oom_kills_seen = self.oom_kills_seen, self.oom_kills()
        return self.oom_kills_seen > seen

    def unreclaimable(self) -> int:
        """Bytes charged to the cgroup that reclaim cannot free (without swap)."""
        total = 0
        for line in os.pread(self.stat_fd, 1 << 16, 0).decode().splitlines():
            key, _, value = line.partition(" ")
            if key in UNRECLAIMABLE:
                total += int(value)
        return total

    def settle(self) -> None:
        """Wait, briefly, until what the last sample left charged that reclaim cannot free
        is gone, so the next one gets its whole limit. Its processes' memory is freed as
        they end and its scratch's when that is unmounted, but the System V shared memory
        of its IPC namespace only once the kernel frees the namespace, a grace period
        later, from a work queue (tens of milliseconds here). What stays (a file a sample
        without a private root left in the host's /dev/shm) is waited for only once."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while (left := self.unreclaimable()) > self.floor + SETTLE_SLACK:
            if time.monotonic() > deadline:
                self.floor = left
                return
            time.sleep(0.001)
        self.floor = min(self.floor, left)

    def is_empty(self) -> bool:
        """Whether no process is in the cgroup. `cgroup.procs` is opened anew each time:
        cgroup v1 keeps the list it read for an open file (and any other reader in the
        same PID namespace) for a second, so reading an open one again can be stale."""
        for folder_fd in self.folder_fds:
            fd = os.open("cgroup.procs", os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder_fd)
            try:
                if os.read(fd, 64).split():
                    return False
            finally:
                os.close(fd)
        return True

    def wait_empty(self) -> None:
        """Return once no process is left in the cgroup (the zygote killed the sample's);
        RuntimeError if some still are after a while."""
        deadline = time.monotonic() + EMPTY_SECONDS
        while not self.is_empty():
            if time.monotonic() > deadline:
                raise RuntimeError("processes of the last sample are left in its cgroup")
            time.sleep(0.001)
