"""The seccomp program, run on a small classic-BPF interpreter for every architecture it
knows (against a direct statement of the policy, for every system call number), and
installed for real in a child process on this machine."""

from __future__ import annotations

import errno
import json
import platform
import struct
import subprocess
import sys
import textwrap

import pytest

from weighted_mtp.eval.sandbox import seccomp as sc

ALLOW = sc.SECCOMP_RET_ALLOW


def run_bpf(code: bytes, nr: int, arch: int, arg0: int) -> int:
    """What the kernel's classic-BPF machine returns for this seccomp_data (only the
    instructions the filter may use; anything else fails the test)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    program = [struct.unpack("=HBBI", code[i : i + 8]) for i in range(0, len(code), 8)]
    accumulator, pc = 0, 0
    for _step in range(len(program) + 1):
        op, jt, jf, k = program[pc]
        pc += 1
        if op == sc.BPF_LD_W_ABS:
            (accumulator,) = struct.unpack_from("=I", data, k)
        elif op == sc.BPF_RET_K:
            return k
        elif op in (sc.BPF_JEQ_K, sc.BPF_JGE_K, sc.BPF_JSET_K):
            taken = {
                sc.BPF_JEQ_K: accumulator == k,
                sc.BPF_JGE_K: accumulator >= k,
                sc.BPF_JSET_K: bool(accumulator & k),
            }[op]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected instruction {op:#x}")
        assert pc < len(program), "jumped past the end"
    raise AssertionError("no return")


def policy(machine: str, nr: int, arch: int, arg0: int) -> int:
    own_arch, numbers, x32 = sc.ARCHES[machine]
    if arch != own_arch or (x32 and nr >= sc.X32_SYSCALL_BIT):
        return sc.SECCOMP_RET_ERRNO | errno.EPERM
    if nr in {numbers[name] for name in sc.DENIED}:
        return sc.SECCOMP_RET_ERRNO | errno.EPERM
    if nr == numbers["clone3"]:
        return sc.SECCOMP_RET_ERRNO | errno.ENOSYS
    if nr == numbers["clone"] and arg0 & sc.CLONE_NAMESPACES:
        return sc.SECCOMP_RET_ERRNO | errno.EPERM
    return ALLOW


@pytest.mark.parametrize("machine", sorted(sc.ARCHES))
def test_the_program_implements_the_policy_on_every_call_number(machine):
    code = sc.program(machine)
    arch = sc.ARCHES[machine][0]
    fork_flags = 0x01200011  # CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
    thread_flags = 0x003D0F00  # what glibc's pthread_create passes
    cases = [(nr, arch, 0) for nr in range(600)]
    cases += [(nr, arch, flags) for nr in range(600) for flags in (fork_flags, thread_flags)]
    numbers = sc.ARCHES[machine][1]
    for flag in range(32):
        cases.append((numbers["clone"], arch, fork_flags | (1 << flag)))
    cases += [(0x40000000 + 101, arch, 0), (101, 0x40000003, 0), (0, 0, 0)]  # x32, i386
    for nr, case_arch, arg0 in cases:
        got = run_bpf(code, nr, case_arch, arg0)
        assert got == policy(machine, nr, case_arch, arg0), (nr, hex(case_arch), hex(arg0))
    assert run_bpf(code, numbers["clone"], arch, fork_flags | 0x10000000) != ALLOW


def test_every_denied_call_has_a_number_on_every_architecture():
    for _arch, numbers, _x32 in sc.ARCHES.values():
        assert set(sc.DENIED) | {"clone", "clone3"} <= set(numbers)
        assert len({numbers[name] for name in sc.DENIED}) == len(sc.DENIED)


PROBE = textwrap.dedent(
    """
    import ctypes, json, os, subprocess, sys, threading
    from weighted_mtp.eval.sandbox import seccomp as sc
    numbers = sc.ARCHES[sc.platform.machine()][1]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    sc.Filter().install()
    def call(name, *args):
        return libc.syscall(numbers[name], *args), ctypes.get_errno()
    seen = {
        "unshare": call("unshare", 0x10000000),
        "clone_newuser": call("clone", 0x10000000 | 17, 0, 0, 0, 0),
        "keyctl": call("keyctl", 0, -3, 1),
        "ptrace": call("ptrace", 16, os.getppid(), 0, 0),
        "mount": call("mount", b"none", b"/tmp", b"tmpfs", 0, 0),
        "clone3": call("clone3", 0, 0),
    }
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    child = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True)
    seen["child"] = child.stdout.decode()
    import numpy
    seen["numpy"] = int(numpy.arange(5).sum())
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(platform.machine() not in sc.ARCHES, reason="no filter for this machine")
def test_installed_it_denies_with_eperm_and_leaves_threads_and_processes_working():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    eperm, enosys = [-1, errno.EPERM], [-1, errno.ENOSYS]
    for name in ("unshare", "clone_newuser", "keyctl", "ptrace", "mount"):
        assert seen[name] == eperm, (name, seen[name])
    assert seen["clone3"] == enosys
    assert (seen["child"], seen["numpy"]) == ("1\n", 10)


def test_an_unknown_machine_has_no_filter_and_says_why():
    unknown = sc.Filter("sparc64")
    assert not unknown.available and unknown.why == "system call numbers unknown on sparc64"
    with pytest.raises(OSError, match="unknown on sparc64"):
        unknown.install()
