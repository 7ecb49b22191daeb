"""Linux isolation for the sandbox: the root a slot sees, its scratch, capabilities, prctl.

Each slot's worker runs inside bubblewrap (`bwrap_arguments`), as root or not: in new
PID, mount, network, IPC and UTS namespaces (not root: and a user namespace), PID 1 there
(when it dies, every process of its samples dies), on a root that holds only:

- read-only bind mounts of /usr, /etc, /bin, /sbin, /lib* and of the interpreter: its
  prefixes and every directory on `sys.path` (the standard library, site-packages with
  numpy and the other installed packages), so every module a plain `python3` imports also
  imports for the unprivileged sample, wherever Python is installed (e.g. under /root);
- a minimal /dev and a /proc of its own PID namespace;
- as root, the slot's cgroup folders;
- empty /tmp and /dev/shm, where each sample gets a fresh size-limited tmpfs (`Scratch`,
  with the interpreter's folders that lie there, e.g. a virtual environment in /tmp,
  bound again).

Nothing else of the host is visible: not the storage, not home folders, not other samples'
folders; and there is no network (the namespace has only a loopback device, down).
Standard library only: the worker imports this.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SCRATCH = ("/tmp", "/dev/shm")  # where each sample gets its own tmpfs
SAMPLE_FOLDER = "/tmp/sample"  # the sample's working folder, empty when it starts
SCRATCH_INODES = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
_libc.mount.argtypes += [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.argtypes += [ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(_bytes(target), MNT_DETACH), f"umount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl {option}")


def drop_capabilities() -> None:
    """Give up every capability (ambient, effective, permitted, inheritable), as a worker
    in a user namespace of its own holds some there (to mount each sample's scratch). A
    process whose uid is not 0 in its namespace gets none back on execve."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two struct __user_cap_data_struct, all zero
    _check(_libc.capset(header, data), "capset")


def interpreter_paths() -> list[str]:
    """The directories a program run by this interpreter may import from (real paths)."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    wanted.update(path for path in sys.path if path and os.path.isdir(path))
    return sorted({os.path.realpath(path) for path in wanted} - {"/"})


def outermost(paths: list[str]) -> list[str]:
    """`paths` without those inside another of them."""
    ordered = sorted(set(paths))
    return [p for p in ordered if not any(p.startswith(q.rstrip("/") + "/") for q in ordered)]


def _bind_readonly(source_fd: int, target: str) -> None:
    mount(f"/proc/self/fd/{source_fd}", target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    mount(None, target, None, flags)


def root_layout() -> tuple[list[str], dict[str, str]]:
    """What the sandbox's root shows of the host: the directories to bind read-only (the
    system's and the interpreter's, outermost only) and the symbolic links to recreate
    (/bin -> usr/bin, an interpreter path reached through a link)."""
    links: dict[str, str] = {}
    sources: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            sources.append(path)
    wanted = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, *sys.path) if p}
    for path in wanted:
        if os.path.isdir(path) and os.path.realpath(path) != path:
            links[path] = os.path.realpath(path)
    binds = outermost(sources + interpreter_paths())
    inside = [p for p in links if any(p.startswith(q.rstrip("/") + "/") for q in binds)]
    for path in inside:  # already there, as the bind shows it
        del links[path]
    return binds, links


def bwrap_arguments(bwrap: str, as_root: bool, writable: Sequence[str] = ()) -> list[str]:
    """The command line that starts a slot's worker inside bubblewrap: new PID, mount,
    network, IPC and UTS namespaces; a read-only root of `root_layout`, a /proc of its PID
    namespace, a minimal /dev and an empty /tmp, and `writable` bound as they are (the
    slot's cgroup folders); it is PID 1 there, dies with the evaluator and has no
    controlling terminal. As root it keeps root's capabilities (to become the slot's uids
    and mount each sample's scratch); not root, it runs in a user namespace of its own
    (and a cgroup namespace) with CAP_SYS_ADMIN there only, to mount each sample's scratch
    and give each sample its own IPC namespace. Samples and the judge drop every
    capability (`drop_capabilities`)."""
    binds, links = root_layout()
    arguments = [bwrap, "--die-with-parent", "--new-session", "--as-pid-1"]
    arguments += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    if not as_root:
        arguments += ["--unshare-user", "--unshare-cgroup-try"]
        arguments += ["--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN"]
    arguments += ["--dir", "/tmp"]  # each sample's scratch is mounted there
    made = {"/", "/tmp"}
    for path in binds:
        for parent in reversed(Path(path).parents):  # open to all (bwrap would copy
            if str(parent) not in made:  # the host's modes: /root is 0700)
                arguments += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        arguments += ["--ro-bind", path, path]
    for path, target in sorted(links.items()):
        arguments += ["--symlink", target, path]
    for path in writable:
        arguments += ["--bind", path, path]
    arguments += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", "/"]
    return arguments


class Scratch:
    """The samples' /tmp and /dev/shm: a fresh size-limited tmpfs at each, owned by the
    sample's identity, with its working folder /tmp/sample (the interpreter's directories
    under /tmp or /dev/shm, such as a virtual environment in /tmp, are bound into the new
    tmpfs again, read-only: it would hide them and the sample could not import).

    Unmounting costs the kernel an RCU grace period (milliseconds per sample), so a sample
    that left its scratch exactly as it found it hands the same mounts to the next one:
    `prepare` compares every place a sample can write (the three folders, all the others
    are read-only) with their state right after mounting: entries, identity, owner, mode,
    link count, size, access, change and modification times, extended attributes. Any
    difference (a file written, even if deleted again; a folder listed or chmod-ed)
    means fresh mounts, as before. It is called only once every process of the previous
    sample is gone."""

    WRITABLE = (*SCRATCH, SAMPLE_FOLDER)

    def __init__(self, owner: tuple[int, int]) -> None:
        self.owner = owner
        self.interpreter = outermost(interpreter_paths())
        self.size_bytes = 0
        self.mounted: tuple[object, ...] | None = None  # the state right after mounting

    def prepare(self, size_bytes: int) -> str:
        """The sample's working folder, in a scratch as fresh as a new tmpfs."""
        if self.mounted is None or size_bytes != self.size_bytes or self.state() != self.mounted:
            self.drop()
            self._mount(size_bytes)
            self.size_bytes = size_bytes
            self.mounted = self.state()
        return SAMPLE_FOLDER

    def drop(self) -> None:
        self.mounted = None
        for path in SCRATCH:
            with contextlib.suppress(OSError):  # not mounted: the sample never got that far
                umount(path)

    def state(self) -> tuple[object, ...]:
        """What a sample could observe of the writable folders (reading them as root with
        O_NOATIME, which leaves their access times as they were)."""
        seen: list[object] = []
        for path in self.WRITABLE:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOATIME | os.O_CLOEXEC)
            except OSError as exc:  # gone or replaced: the scratch is not as it was
                seen.append(exc.errno)
                continue
            try:
                info = os.fstat(fd)
                seen.append(
                    (
                        info.st_dev,
                        info.st_ino,
                        info.st_mode,
                        info.st_uid,
                        info.st_gid,
                        info.st_nlink,
                        info.st_size,
                        info.st_atime_ns,
                        info.st_mtime_ns,
                        info.st_ctime_ns,
                        sorted(os.listdir(fd)),
                        sorted(os.listxattr(fd)),
                    )
                )
            finally:
                os.close(fd)
        return tuple(seen)

    def _mount(self, size_bytes: int) -> None:
        uid, gid = self.owner
        for path in SCRATCH:
            hidden = {
                p: os.open(p, os.O_PATH | os.O_CLOEXEC)
                for p in self.interpreter
                if p.startswith(path + "/")
            }
            # The judge runs as another uid and imports from the interpreter's folders bound
            # here again: it may pass through (0711), but never list the sample's scratch.
            mode = "0711" if hidden else "0700"
            options = f"size={size_bytes},nr_inodes={SCRATCH_INODES},mode={mode},uid={uid}"
            options += f",gid={gid}"
            try:
                mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, options)
                for inner, fd in hidden.items():
                    os.makedirs(inner, mode=0o755, exist_ok=True)
                    _bind_readonly(fd, inner)
            finally:
                for fd in hidden.values():
                    os.close(fd)
        os.mkdir(SAMPLE_FOLDER, 0o700)
        os.chown(SAMPLE_FOLDER, uid, gid)
