"""The `weighted_mtp` log as a user sees it: notes by default, debug lines with `-v`, neither
with `-q`, nothing from a torchrun rank but 0 unless asked; `--json` alone on stdout; and
text that wraps only between words on an 80-column terminal."""

import json
import os
import re
import subprocess
import sys

import pytest

from weighted_mtp.storage.atomic import TEMP_MARKER
from weighted_mtp.storage.layout import Layout

NOTE = "note: removed 1 temporary file(s) a killed run left"


def _wmtp(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def _leave_a_temp_file(layout: Layout) -> None:
    """What a killed write leaves: the next command that writes removes it, with a note."""
    (layout.models_dir / f"weights{TEMP_MARKER}gone").write_bytes(b"half")


def _verify(layout: Layout, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    _leave_a_temp_file(layout)
    out = _wmtp(*options, "--root", str(layout.root), "verify", **env)
    assert out.returncode == 1, out.stderr  # an empty storage: the checklist fails
    assert not list(layout.models_dir.glob(f"*{TEMP_MARKER}*"))  # removed however quiet
    return out


def test_notes_show_by_default_and_debug_lines_with_v(layout):
    plain = _verify(layout)
    assert NOTE in plain.stderr
    assert "debug:" not in plain.stderr
    verbose = _verify(layout, "-v")
    assert NOTE in verbose.stderr
    # Each check group is a phase: its start and its duration.
    assert "debug: checking environment ..." in verbose.stderr
    assert re.search(r"debug: checking environment: done in \d+\.\d s", verbose.stderr)
    assert "note:" not in verbose.stdout and "debug:" not in verbose.stdout


def test_q_hides_notes_but_not_errors(layout, tmp_path):
    quiet = _verify(layout, "-q")
    assert "note:" not in quiet.stderr and "debug:" not in quiet.stderr
    assert "Step 0" in quiet.stdout  # the command's own output stays
    (tmp_path / "a-file").write_text("")
    error = _wmtp("-q", "--root", str(tmp_path / "a-file"), "verify")
    assert error.returncode == 1 and error.stderr.startswith("error: the storage root is not")


def test_v_and_q_together_are_a_usage_error(tmp_path):
    out = _wmtp("-v", "-q", "--root", str(tmp_path), "storage", "status")
    assert out.returncode == 2 and out.stderr.startswith("error: -v and -q both given")


def test_a_rank_other_than_0_logs_nothing_unless_asked(layout):
    torchrun = {"RANK": "1", "WORLD_SIZE": "2"}
    rank_1 = _verify(layout, "-v", **torchrun)
    assert "note:" not in rank_1.stderr and "debug:" not in rank_1.stderr
    every = _verify(layout, "--log-all-ranks", **torchrun)
    assert f"note: [rank 1] {NOTE.removeprefix('note: ')}" in every.stderr
    by_env = _verify(layout, **torchrun, WMTP_LOG_ALL_RANKS="1")
    assert "note: [rank 1] removed 1 temporary file(s)" in by_env.stderr
    rank_0 = _verify(layout, **{**torchrun, "RANK": "0"})
    assert NOTE in rank_0.stderr and "[rank" not in rank_0.stderr


def test_build_json_is_the_only_thing_on_stdout(layout):
    _leave_a_temp_file(layout)
    out = _wmtp("--root", str(layout.root), "build", "--only", "init", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # the whole of stdout
    assert [(s["name"], s["status"]) for s in result["steps"]] == [("init", "skipped")]
    assert result["removed_leftovers"] == [f"models_v2/weights{TEMP_MARKER}gone"]
    assert set(result["manifest_diff"]) >= {"changed", "missing", "unexpected"}
    assert "note: init skipped in" in out.stderr and NOTE in out.stderr


def _words(text: str) -> set[str]:
    """The words of a command's output, table borders and measured numbers (a rate, a
    duration: they differ between two runs) apart."""
    words = set(re.split(r"[\s│┃┏┓┗┛┡┩└┘┌┐├┤┬┴┼━─╇╈┳┻╋]+", text))
    return {w for w in words if w and not re.fullmatch(r"[\d.,:]+", w)}


def broken_words(narrow: str, wide: str) -> set[str]:
    """Words in the 80-column output that the wide one does not have: pieces of words cut."""
    return _words(narrow) - _words(wide)


@pytest.mark.parametrize(
    "args",
    [("verify",), ("storage", "status"), ("storage", "init")],
    ids=["verify", "status", "init"],
)
def test_no_word_breaks_at_80_columns(tmp_path, args):
    # A deep root: its paths are longer than a line.
    root = tmp_path / ("a-storage-root-with-a-long-name-" * 3) / "storage"
    _wmtp("--root", str(root), "storage", "init")
    wide = _wmtp("--root", str(root), *args, COLUMNS="1000")
    narrow = _wmtp("--root", str(root), *args, COLUMNS="80")
    assert narrow.returncode == wide.returncode
    assert str(root) in wide.stdout + wide.stderr  # the output names the long paths
    assert broken_words(narrow.stdout, wide.stdout) == set()
    assert broken_words(narrow.stderr, wide.stderr) == set()


def test_a_score_table_and_its_results_path_stay_whole_at_80_columns(eval_layout, tmp_path):
    raw = eval_layout.dataset("humaneval").raw / "HumanEval.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()[:2]]
    folder = tmp_path / ("samples-in-a-folder-with-a-long-name-" * 3)
    folder.mkdir()
    samples = folder / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n"
            for r in rows
        )
    )
    args = ["eval", "score", "--dataset", "humaneval", "--samples", str(samples), "--partial"]
    args += ["--k", "1", "--workers", "1"]
    runs = [_wmtp("--root", str(eval_layout.root), *args, COLUMNS=c) for c in ("1000", "80")]
    wide, narrow = runs
    assert wide.returncode == narrow.returncode == 0, wide.stderr + narrow.stderr
    assert "humaneval: 2 samples of 2 tasks (162 of the split's tasks" in wide.stdout
    assert f"{samples}_results.jsonl" in narrow.stdout  # the path whole
    assert broken_words(narrow.stdout, wide.stdout) == set()
