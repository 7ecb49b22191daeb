"""The seccomp filter of every sample and judge process: system calls a program never needs
to compute an answer, and that reach kernel state beyond the process, fail with EPERM.

A classic-BPF program built here (no libseccomp: the worker imports only the standard
library, and a cluster node may lack the shared library) and installed with
`prctl(PR_SET_SECCOMP)` after `PR_SET_NO_NEW_PRIVS`, as the last step of a process's
confinement; every thread and child it makes inherits it, and nothing can remove it.
Denied calls return EPERM rather than killing the process, so library code that probes
them (e.g. `os.unshare` in a test of a feature) degrades as on a locked-down machine;
`clone3` returns ENOSYS, so libc falls back to `clone`, whose flags the filter can read (a
BPF program cannot read `clone3`'s arguments, which live in memory). Calls of another
ABI (32-bit `int 0x80` on x86_64, x32) fail with EPERM as a whole: their numbers differ.

Denied: see `DENIED` (tracing other processes and reading their memory, kernel keyrings,
BPF, perf events, userfaultfd, io_uring (whose operations no filter sees), mounting and
namespaces (`mount`, the new mount API, `pivot_root`, `chroot`, `setns`, `unshare`, and
`clone` with any `CLONE_NEW*` flag), kernel modules, kexec, reboot, swap, accounting,
the kernel log, and `open_by_handle_at`). Standard library only: the worker imports this.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16  # arg0's low 32 bits (little-endian)
BPF_LD_W_ABS = 0x20
BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K = 0x15, 0x35, 0x45
BPF_RET_K = 0x06
X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (NEWTIME, 0x80, is part of
# clone's exit signal byte: only clone3 and unshare take it, and both are denied).
CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
CLONE_NAMESPACES |= 0x10000000 | 0x20000000 | 0x40000000

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
    "unshare",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "open_by_handle_at",
)
# asm-generic numbers (aarch64, riscv64), then x86_64's own.
GENERIC = {
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219,
    "add_key": 217, "request_key": 218, "bpf": 280, "perf_event_open": 241,
    "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "setns": 268, "unshare": 97, "kexec_load": 104,
    "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "syslog": 116,
    "open_by_handle_at": 265, "clone": 220, "clone3": 435,
}  # fmt: skip
X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250,
    "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "mount": 165, "umount2": 166, "pivot_root": 155,
    "chroot": 161, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "setns": 308, "unshare": 272,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
    "syslog": 103, "open_by_handle_at": 304, "clone": 56, "clone3": 435,
}  # fmt: skip
# machine -> (AUDIT_ARCH_*, syscall numbers, whether numbers with the x32 bit exist)
ARCHES = {
    "x86_64": (0xC000003E, X86_64, True),
    "aarch64": (0xC00000B7, GENERIC, False),
    "riscv64": (0xC00000F3, GENERIC, False),
}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str) -> bytes:
    """The filter's instructions (struct sock_filter[]) for `machine`; KeyError if unknown."""
    arch, numbers, x32 = ARCHES[machine]
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    checks = [numbers[name] for name in DENIED]
    # Layout: load arch, check it, load nr, [x32 check], deny checks, clone3 -> ENOSYS,
    # clone -> flags check, allow; the flags check; the shared EPERM return. A jump counts
    # instructions forward from the next one.
    body = [(BPF_JGE_K, X32_SYSCALL_BIT)] if x32 else []  # each jumps to EPERM when true
    body += [(BPF_JEQ_K, nr) for nr in checks]
    clone3_at = 3 + len(body)
    clone_at = clone3_at + 2  # after clone3's check and its ENOSYS return
    allow_at = clone_at + 1
    flags_at = allow_at + 1  # load arg0, JSET -> eperm, allow
    eperm_at = flags_at + 3
    out = [
        _op(BPF_LD_W_ABS, OFFSET_ARCH),
        _op(BPF_JEQ_K, arch, 0, eperm_at - 2),  # a foreign ABI: deny it all
        _op(BPF_LD_W_ABS, OFFSET_NR),
    ]
    for code, k in body:
        out.append(_op(code, k, eperm_at - len(out) - 1, 0))
    out.append(_op(BPF_JEQ_K, numbers["clone3"], 0, 1))
    out.append(_op(BPF_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS))
    out.append(_op(BPF_JEQ_K, numbers["clone"], flags_at - clone_at - 1, 0))
    out.append(_op(BPF_RET_K, SECCOMP_RET_ALLOW))
    out.append(_op(BPF_LD_W_ABS, OFFSET_ARG0))
    out.append(_op(BPF_JSET_K, CLONE_NAMESPACES, 1, 0))
    out.append(_op(BPF_RET_K, SECCOMP_RET_ALLOW))
    out.append(_op(BPF_RET_K, eperm))
    assert len(out) == eperm_at + 1
    return b"".join(out)


class Filter:
    """The filter for this machine, built once (`available` False, with `why`, where the
    architecture's system call numbers are not known here)."""

    def __init__(self, machine: str | None = None) -> None:
        machine = machine or platform.machine()
        self.code = program(machine) if machine in ARCHES else b""
        self.available = bool(self.code)
        self.why = "" if self.available else f"system call numbers unknown on {machine}"

    def install(self) -> None:
        """Confine the calling thread (and all it later makes); needs PR_SET_NO_NEW_PRIVS
        (or CAP_SYS_ADMIN). OSError if the kernel refuses."""
        if not self.available:
            raise OSError(errno.ENOSYS, f"no seccomp filter: {self.why}")
        buffer = ctypes.create_string_buffer(self.code, len(self.code))

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = Program(len(self.code) // 8, ctypes.addressof(buffer))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        libc.prctl.argtypes += [ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"seccomp filter: {os.strerror(code)}")
