"""Run a command as an unprivileged user from a test that runs as root.

CI runs the suite as root, with the project's interpreter where other users may not read
it (a virtual environment in a private checkout, a Python under /root/.pyenv). So the
command runs as `nobody` in a mount namespace of its own in which every directory on the
way to the paths it needs (the interpreter's, the checkout's) that `nobody` could not
enter is covered by a world-readable tmpfs holding read-only binds of exactly those paths;
nothing on the host changes, and the rest of the file system looks as it does to `nobody`
anywhere. Root only.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path

from weighted_mtp.eval.sandbox import isolation as iso

USER = "nobody"


def _traversable(path: str, uid: int, gid: int) -> bool:
    """Whether `uid` may enter directory `path` by its mode bits (root's ACLs aside)."""
    info = os.stat(path)
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def _blocked(paths: Sequence[str], uid: int, gid: int) -> dict[str, list[str]]:
    """For each outermost directory `uid` cannot enter on the way to `paths` (or that is
    one of them, e.g. a checkout made by `mktemp -d`: then its entries), what to bind
    below it."""
    covers: dict[str, list[str]] = {}
    for path in iso.outermost([os.path.realpath(p) for p in paths]):
        parts = Path(path).parts
        for depth in range(1, len(parts) + 1):
            ancestor = str(Path(*parts[:depth]))
            if not _traversable(ancestor, uid, gid):
                inside = (
                    [path]
                    if depth < len(parts)
                    else sorted(os.path.join(path, name) for name in os.listdir(path))
                )
                covers.setdefault(ancestor, []).extend(inside)
                break
    return {cover: covers[cover] for cover in iso.outermost(list(covers))}


def _enter(covers: dict[str, list[str]], uid: int | None, gid: int) -> None:
    """In the child, before exec: a private mount namespace with the covers, then `uid`
    (None: stay root)."""
    iso.unshare(iso.CLONE_NEWNS)
    iso.mount(None, "/", None, iso.MS_REC | iso.MS_PRIVATE)
    for cover, inside in covers.items():
        fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in inside}
        iso.mount("tmpfs", cover, "tmpfs", iso.MS_NOSUID | iso.MS_NODEV, "mode=0755,size=1m")
        for path, fd in fds.items():
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:  # a file: its mount point is an empty file
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                open(path, "w").close()
            iso.mount(f"/proc/self/fd/{fd}", path, None, iso.MS_BIND | iso.MS_REC)
            os.close(fd)
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def run_unprivileged(
    command: Sequence[str],
    needs: Sequence[str],
    cwd: str,
    env: dict[str, str],
    timeout: float,
    stay_root: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`command` as `nobody`, able to read `needs` and the interpreter's directories.
    `stay_root`: as root, with those readable by every user (e.g. for the sandbox's own
    uids, when it runs without the private root that would show them the interpreter)."""
    user = pwd.getpwnam(USER)
    binds, _links = iso.root_layout()
    covers = _blocked([*binds, *needs], user.pw_uid, user.pw_gid)
    uid = None if stay_root else user.pw_uid
    return subprocess.run(
        list(command),
        cwd=cwd,
        env={**env, "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=lambda: _enter(covers, uid, user.pw_gid),
    )


def sandbox_isolates() -> bool:
    """Whether samples here get their namespaces and private root: as root, or where
    bubblewrap can make user namespaces."""
    if os.geteuid() == 0:
        return True
    from weighted_mtp.errors import UsageError
    from weighted_mtp.eval.sandbox.pool import bwrap_command

    try:
        bwrap_command()
    except UsageError:
        return False
    return True
