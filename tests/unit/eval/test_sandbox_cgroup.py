"""Where the sandbox puts its slot cgroups, read from /proc/self/cgroup and mountinfo.

These run on directory trees laid out as the kernel's cgroup file systems are (plain
files, so no limit is enforced here): they check which folders and files the sandbox
picks and writes for the layouts it meets, including cgroup v2, which this machine does
not offer its controllers in. The kernel's side is in the integration tests."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from weighted_mtp.eval.sandbox import cgroup

V2_MOUNT = "30 23 0:27 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "35 31 0:32 {inner} {root}/{name} rw - cgroup cgroup rw,{name}\n"
# What the kernel puts in a new cgroup's folder (of those the sandbox writes)
V2_FILES = ("cgroup.procs", "memory.max", "pids.max")
V1_FILES = ("cgroup.procs", "tasks", "memory.limit_in_bytes", "pids.max")


def layout(monkeypatch, tmp_path: Path, proc_cgroup: str, mountinfo: str) -> Path:
    """A cgroup tree in `tmp_path` whose new folders get their interface files."""
    make = cgroup._make

    def make_with_files(parent: str, name: str) -> str:
        folder = make(parent, name)
        v1 = os.path.basename(parent) in ("memory", "pids") or "/memory/" in folder
        for file in V1_FILES if v1 else V2_FILES:
            Path(folder, file).write_text("")
        return folder

    monkeypatch.setattr(cgroup, "_make", make_with_files)
    return _layout(monkeypatch, tmp_path, proc_cgroup, mountinfo)


def _layout(monkeypatch, tmp_path: Path, proc_cgroup: str, mountinfo: str) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (tmp_path / "self_cgroup").write_text(proc_cgroup)
    (tmp_path / "mountinfo").write_text(mountinfo.replace("{root}", str(root)))
    monkeypatch.setattr(cgroup, "PROC_CGROUP", str(tmp_path / "self_cgroup"))
    monkeypatch.setattr(cgroup, "MOUNTINFO", str(tmp_path / "mountinfo"))
    return root


def cgroup_dir(path: Path, controllers: str = "", subtree: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers)
    (path / "cgroup.subtree_control").write_text(subtree)
    return path


def test_pure_v2_limits_a_child_of_the_evaluators_cgroup(monkeypatch, tmp_path) -> None:
    root = layout(monkeypatch, tmp_path, "0::/job.scope\n", V2_MOUNT)
    own = cgroup_dir(root / "job.scope", "cpu memory pids")
    group = cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    slot = str(own / "wmtp-sandbox-7-0")
    assert (group.version, group.memory, group.pids) == (2, slot, slot)
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (own / "wmtp-sandbox-7-0" / "memory.max").read_text() == str(256 << 20)
    assert (own / "wmtp-sandbox-7-0" / "pids.max").read_text() == "64"
    assert group.join_files == [slot + "/cgroup.procs"]
    assert group.worker_config()["events"] == str(own / "wmtp-sandbox-7-0" / "memory.events")


def test_v2_next_to_the_evaluator_when_its_cgroup_holds_processes(monkeypatch, tmp_path) -> None:
    """Cgroup v2 refuses controllers below a non-root cgroup with processes (EBUSY)."""
    root = layout(monkeypatch, tmp_path, "0::/system.slice/ci.service\n", V2_MOUNT)
    parent = cgroup_dir(root / "system.slice", "memory pids", "memory pids")
    own = cgroup_dir(parent / "ci.service", "memory pids")
    write = cgroup._write

    def busy(path: str, value: str) -> None:
        if path == str(own / "cgroup.subtree_control"):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        write(path, value)

    monkeypatch.setattr(cgroup, "_write", busy)
    group = cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    assert group.folders == [str(parent / "wmtp-sandbox-7-0")]
    assert (parent / "cgroup.subtree_control").read_text() == "memory pids"  # untouched


def test_v2_at_the_top_of_a_cgroup_namespace_with_processes_is_no_place(
    monkeypatch, tmp_path
) -> None:
    """A container's own cgroup namespace: its root holds processes and has no parent."""
    root = layout(monkeypatch, tmp_path, "0::/\n", V2_MOUNT)
    cgroup_dir(root, "memory pids")

    def busy(path: str, value: str) -> None:
        raise OSError(errno.EBUSY, "Device or resource busy", path)

    monkeypatch.setattr(cgroup, "_write", busy)
    with pytest.raises(OSError, match="no parent of it offers one"):
        cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    assert [p.name for p in root.iterdir() if p.is_dir()] == []


def test_v1_in_a_container_whose_hierarchies_are_bind_mounted(monkeypatch, tmp_path) -> None:
    """Hybrid layout: memory and pids in v1 hierarchies (mounted from the container's own
    cgroup, as Docker does without a cgroup namespace), v2 without those controllers."""
    proc = "9:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n"
    mounts = (
        V1_MOUNT.format(inner="/docker/abc", root="{root}", name="memory")
        + V1_MOUNT.format(inner="/docker/abc", root="{root}", name="pids")
        + "41 31 0:38 / {root}/unified rw - cgroup2 cgroup2 rw\n"
    )
    root = layout(monkeypatch, tmp_path, proc, mounts)
    cgroup_dir(root / "unified", "hugetlb")
    for name in ("memory", "pids"):
        (root / name).mkdir()
    group = cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    memory, pids = root / "memory" / "wmtp-sandbox-7-0", root / "pids" / "wmtp-sandbox-7-0"
    assert (group.version, group.folders) == (1, [str(memory), str(pids)])
    assert (memory / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (pids / "pids.max").read_text() == "64"
    assert group.join_files == [str(memory / "tasks"), str(pids / "tasks")]
    # a second sandbox of the same process gets a name of its own
    again = cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    assert again.folders == [f"{memory}-1", f"{pids}-1"]


def test_no_memory_controller_anywhere_is_one_reason(monkeypatch, tmp_path) -> None:
    root = layout(monkeypatch, tmp_path, "0::/\n", V2_MOUNT)
    cgroup_dir(root, "cpu io")
    with pytest.raises(OSError) as caught:
        cgroup.create("wmtp-sandbox-7-0", 64, 256 << 20)
    assert cgroup.describe_failure(caught.value) == (
        "no cgroup hierarchy with the memory controller"
    )


def test_mountinfo_escapes_are_read(monkeypatch, tmp_path) -> None:
    spaced = tmp_path / "with space"
    spaced.mkdir()
    (tmp_path / "self_cgroup").write_text("0::/a\n")
    escaped = str(spaced).replace(" ", "\\040")
    (tmp_path / "mountinfo").write_text(V2_MOUNT.replace("{root}", escaped))
    monkeypatch.setattr(cgroup, "PROC_CGROUP", str(tmp_path / "self_cgroup"))
    monkeypatch.setattr(cgroup, "MOUNTINFO", str(tmp_path / "mountinfo"))
    cgroup_dir(spaced / "a", "memory")
    assert cgroup.locate("memory") == cgroup.Place(2, str(spaced / "a"), False)
