"""The data commands as a user runs them: real process, real exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def wmtp(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(root), *args],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def mbpp_mirror(tmp_path: Path) -> Path:
    from weighted_mtp.synthetic.datasets import write_mbpp_mirror

    return write_mbpp_mirror(tmp_path / "mirror", n_tasks=30)


def test_download_prepare_small_validate_stats(tmp_path, mbpp_mirror, sp_model_path):
    root = tmp_path / "storage"
    assert wmtp("storage", "init", root=root).returncode == 0
    down = wmtp("data", "download", "mbpp", "--mirror", str(mbpp_mirror), "--json", root=root)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["raw_files"]["mbpp.jsonl"]["rows"] == 30
    prep = wmtp("data", "prepare", "mbpp", "--tokenizer", str(sp_model_path), "--json", root=root)
    assert prep.returncode == 0, prep.stderr
    assert set(json.loads(prep.stdout)["splits"]) == {"train", "validation", "test"}
    assert wmtp("data", "small", "mbpp", root=root).returncode == 0
    check = wmtp("data", "validate", "--json", root=root)
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["ok"] is True
    png = tmp_path / "lengths.png"
    stats = wmtp("data", "stats", "mbpp", "--plot", str(png), root=root)
    assert stats.returncode == 0 and "train" in stats.stdout and png.is_file()

    processed = root / "datasets_v2/mbpp/processed/train.jsonl"
    processed.write_text(processed.read_text().replace("a + b", "a+b", 1))
    failed = wmtp("data", "validate", "mbpp", root=root)
    assert failed.returncode == 1 and "✘ checksums" in failed.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("data", "prepare", "nope"), 2, "unknown dataset 'nope'"),
        (("data", "prepare", "mbpp"), 1, "or pass --tokenizer PATH"),
        (("data", "stats", "mbpp"), 1, "run `wmtp data prepare mbpp` first"),
    ],
)
def test_errors_are_one_line(tmp_path, args, code, message):
    result = wmtp(*args, root=tmp_path / "storage")
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_mirror_line_is_one_line_error(tmp_path):
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "mbpp.jsonl").write_text('{"task_id": 1}\nnot json\n')
    result = wmtp("data", "download", "mbpp", "--mirror", str(mirror), root=tmp_path / "s")
    assert result.returncode == 1 and "line 2 is not valid JSON" in result.stderr
    assert "mbpp.jsonl" in result.stderr and "Traceback" not in result.stderr
