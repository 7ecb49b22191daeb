"""The data commands as a user runs them: real process, real exit codes, one-line errors."""

import json
from pathlib import Path

import pytest

from tests.helpers import run_wmtp

wmtp = run_wmtp


@pytest.fixture
def mbpp_mirror(tmp_path: Path) -> Path:
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.storage.atomic import atomic_write

    return write_mbpp_mirror(tmp_path / "mirror", atomic_write, n_tasks=30)


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


def test_bad_mirror_line_is_one_line_error(tmp_path):
    mirror = tmp_path / "m"
    mirror.mkdir()
    (mirror / "mbpp.jsonl").write_text('{"task_id": 1}\nnot json\n')
    result = wmtp("data", "download", "mbpp", "--mirror", str(mirror), root=tmp_path / "s")
    assert result.returncode == 1 and "line 2 is not valid JSON" in result.stderr
    assert "mbpp.jsonl" in result.stderr and "Traceback" not in result.stderr
