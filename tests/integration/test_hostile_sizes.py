"""Hostile sizes cost bounded memory: each reader runs in a fresh interpreter whose peak
RSS (VmHWM) is compared with a baseline process that imports and loads the same things but
reads nothing. Caps are lowered through their environment variables where that keeps the
inputs small while still proving the mechanism."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest

MIB = 1 << 20
PREAMBLE = """
import json, resource, sys
from pathlib import Path
from weighted_mtp.errors import WmtpError
"""
REPORT = """
def _peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
print(json.dumps({"error": error, "peak_kib": _peak_kib(),
                  "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime}))
"""


def _run(setup: str, action: str, env: dict[str, str] | None = None) -> dict:
    """Run `setup` then `action` (which sets `error` to a WmtpError line or None)."""
    body = PREAMBLE + textwrap.dedent(setup) + "\nerror = None\ntry:\n"
    body += textwrap.indent(textwrap.dedent(action), "    ")
    body += "\nexcept WmtpError as exc:\n    error = exc.line()\n" + REPORT
    out = subprocess.run(
        [sys.executable, "-c", body],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def _extra_mib(setup: str, action: str, env: dict[str, str] | None = None) -> tuple[float, dict]:
    """(peak RSS above the baseline in MiB, the hostile run's result)."""
    baseline = _run(setup, "pass", env)
    result = _run(setup, action, env)
    return (result["peak_kib"] - baseline["peak_kib"]) / 1024, result


def _gzip_file(path, pattern: bytes, size: int):
    with gzip.open(path, "wb", compresslevel=9) as handle:
        chunk = pattern * (MIB // len(pattern))
        for _ in range(size // MIB):
            handle.write(chunk)
    return path


READ_JSONL = """
from weighted_mtp.storage.jsonl import iter_jsonl
for _ in iter_jsonl(Path({path!r})):
    pass
"""
SETUP_READER = "import weighted_mtp.storage.jsonl\n"


@pytest.mark.parametrize("expanded_mib", [16, 48])
def test_a_gzip_line_without_newline_is_refused_at_the_cap_memory_flat(tmp_path, expanded_mib):
    path = _gzip_file(tmp_path / "HumanEval.jsonl.gz", b"a", expanded_mib * MIB)
    extra, result = _extra_mib(
        SETUP_READER, READ_JSONL.format(path=str(path)), {"WMTP_MAX_LINE_BYTES": str(4 * MIB)}
    )
    assert "line 1 is longer than 4,194,304 bytes" in result["error"]
    assert extra < 24, f"{extra:.1f} MiB above baseline for {expanded_mib} MiB of one line"
    print(f"one {expanded_mib} MiB gzip line: +{extra:.1f} MiB peak RSS")


def test_gigabytes_of_blank_lines_are_skipped_in_c(tmp_path):
    path = _gzip_file(tmp_path / "HumanEval.jsonl.gz", b"\n \n\r\n", 64 * MIB)
    extra, result = _extra_mib(
        SETUP_READER, READ_JSONL.format(path=str(path)), {"WMTP_MAX_GZIP_RATIO": "100000"}
    )
    assert "file is empty: no JSON records" in result["error"]
    assert extra < 24
    # 50 M blank lines: a Python loop per line takes most of a minute on this machine
    assert result["cpu_s"] < 15, result
    print(f"64 MiB of blank lines: +{extra:.1f} MiB, {result['cpu_s']:.1f} s CPU")


def test_a_gzip_bomb_stops_at_its_allowance(tmp_path):
    path = _gzip_file(tmp_path / "HumanEval.jsonl.gz", b'{"a": 1}\n', 24 * MIB)
    env = {"WMTP_MIN_GZIP_ALLOWANCE": str(MIB), "WMTP_MAX_GZIP_RATIO": "20"}
    extra, result = _extra_mib(SETUP_READER, READ_JSONL.format(path=str(path)), env)
    allowed = max(MIB, 20 * path.stat().st_size)
    assert f"gzip file expands beyond {allowed:,} bytes" in result["error"]
    assert "WMTP_MAX_GZIP_RATIO" in result["error"]
    assert extra < 24
    print(f"gzip bomb: +{extra:.1f} MiB")


PREPARE = """
from weighted_mtp.data.prepare import prepare_into
from weighted_mtp.storage.layout import Layout
paths = Layout(Path({root!r})).dataset("mbpp")
summary = prepare_into(paths, paths.raw, Path({tokenizer!r}))
print(json.dumps(summary["rejected"]))
"""
SETUP_PREPARE = """
from weighted_mtp.data.prepare import prepare_into
from weighted_mtp.data.tokens import Tokenizer
Tokenizer(Path({tokenizer!r}))
"""


def _mbpp_raw(layout, hostile_row: dict) -> None:
    rows = [{"task_id": i, "text": "Add.", "code": f"x = {i}", "test_list": []} for i in (1, 2)]
    layout.dataset("mbpp").raw_split("mbpp").write_text(
        "".join(json.dumps(row) + "\n" for row in [*rows, hostile_row])
    )


def test_a_20_mb_line_is_refused_by_prepare_with_flat_memory(layout, sp_model_path):
    _mbpp_raw(layout, {"task_id": 3, "text": "t", "code": "y" * (20 * MIB), "test_list": []})
    setup = SETUP_PREPARE.format(tokenizer=str(sp_model_path))
    action = PREPARE.format(root=str(layout.root), tokenizer=str(sp_model_path))
    extra, result = _extra_mib(setup, action, {"WMTP_MAX_LINE_BYTES": str(4 * MIB)})
    assert "line 3 is longer than 4,194,304 bytes" in result["error"]
    assert extra < 24
    print(f"20 MB line refused by prepare: +{extra:.1f} MiB")


def test_a_6_mb_solution_is_rejected_before_tokenizing(layout, sp_model_path):
    """Under the line limit, the text limit keeps the 6 MB solution from SentencePiece
    (which would take several hundred MiB for it)."""
    code = "def f(x):\n    return x\n" * (6 * MIB // 24)
    _mbpp_raw(layout, {"task_id": 3, "text": "t", "code": code, "test_list": []})
    setup = SETUP_PREPARE.format(tokenizer=str(sp_model_path))
    action = PREPARE.format(root=str(layout.root), tokenizer=str(sp_model_path))
    extra, result = _extra_mib(setup, action)
    assert result["error"] is None
    assert extra < 64, f"{extra:.1f} MiB"
    print(f"6 MB solution rejected by prepare: +{extra:.1f} MiB")


def test_a_million_layers_cost_nothing_before_refusal(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"dim": 4096, "n_layers": 10**6, "n_heads": 32, "vocab_size": 1}))
    setup = "from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes\n"
    action = f"meta_tensor_shapes(MetaParams.from_file(Path({str(path)!r})))\n"
    extra, result = _extra_mib(setup, action)
    assert "n_layers 1000000 is beyond the sane maximum 1024" in result["error"]
    assert extra < 4
    print(f"n_layers 1e6: +{extra:.1f} MiB")
