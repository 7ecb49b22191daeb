import gzip
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from weighted_mtp.assets.benchmarks.humaneval import humaneval_source
from weighted_mtp.catalog import load_catalog
from weighted_mtp.data.download import download_dataset, raw_part
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file


def test_upstream_names_map_to_raw_parts():
    assert raw_part("codecontests", "data/train-00003-of-00039-abc.parquet") == "train"
    assert raw_part("codecontests", "data/valid-00000-of-00001.parquet") == "validation"
    assert raw_part("codecontests", "code_contests.jsonl") == "code_contests"
    assert raw_part("mbpp", "full/prompt-00000-of-00001.parquet") == "mbpp"
    assert raw_part("humaneval", "HumanEval.jsonl.gz") == "HumanEval"


def test_codecontests_parquet_mirror_to_raw_jsonl(layout, mirrors: Path):
    import pyarrow.parquet as pq

    source = download_dataset(
        layout, load_catalog(), "codecontests", mirror=mirrors / "codecontests"
    )
    paths = layout.dataset("codecontests")
    assert sorted(source["raw_files"]) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    upstream = mirrors / "codecontests/data/valid-00000-of-00001.parquet"
    rows = [json.loads(line) for line in paths.raw_split("validation").read_text().splitlines()]
    assert rows == pq.read_table(upstream).to_pylist()
    assert source["upstream_files"]["data/valid-00000-of-00001.parquet"] == sha256_file(upstream)
    assert json.loads(paths.source.read_text()) == source


def test_raw_checksums_pass_sha256sum_c(layout, mirrors: Path):
    download_dataset(layout, load_catalog(), "codecontests", mirror=mirrors / "codecontests")
    stats = layout.dataset("codecontests").stats
    entries = read_sha256sums(stats / "raw_checksums.txt")
    assert set(entries) == {"../raw/test.jsonl", "../raw/train.jsonl", "../raw/validation.jsonl"}
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "-c", "raw_checksums.txt"], cwd=stats, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


def test_humaneval_gz_mirror_is_the_real_164(layout, mirrors: Path):
    download_dataset(layout, load_catalog(), "humaneval", mirror=mirrors / "humaneval")
    raw = layout.dataset("humaneval").raw_split("HumanEval").read_text().splitlines()
    with gzip.open(humaneval_source(), "rt") as handle:
        original = [json.loads(line) for line in handle if line.strip()]
    assert [json.loads(line) for line in raw] == original and len(original) == 164


def test_jsonl_split_files_in_a_mirror(layout, tmp_path: Path, mirrors: Path):
    mirror = tmp_path / "cc"
    mirror.mkdir()
    download_dataset(layout, load_catalog(), "codecontests", mirror=mirrors / "codecontests")
    raw = layout.dataset("codecontests").raw
    shutil.copy(raw / "train.jsonl", mirror / "train.jsonl")
    shutil.copy(raw / "validation.jsonl", mirror / "valid.jsonl")
    source = download_dataset(layout, load_catalog(), "codecontests", mirror=mirror)
    assert sorted(source["raw_files"]) == ["train.jsonl", "validation.jsonl"]
    assert not (raw / "test.jsonl").exists()  # a stale part from the earlier download


def test_bad_mirror_line_fails_without_a_raw_file(layout, tmp_path: Path):
    mirror = tmp_path / "mbpp"
    mirror.mkdir()
    (mirror / "mbpp.jsonl").write_bytes(b'{"task_id": 1}\n{"task_id": \n')
    with pytest.raises(WmtpError, match="line 2 is not valid JSON") as exc:
        download_dataset(layout, load_catalog(), "mbpp", mirror=mirror)
    assert "mbpp.jsonl" in exc.value.line()
    paths = layout.dataset("mbpp")
    assert not paths.raw_split("mbpp").exists() and not paths.source.exists()
    assert not list(paths.raw.iterdir())


def test_empty_or_missing_mirror(layout, tmp_path: Path):
    with pytest.raises(WmtpError, match="mirror folder not found"):
        download_dataset(layout, load_catalog(), "mbpp", mirror=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WmtpError, match="mirror holds no files"):
        download_dataset(layout, load_catalog(), "mbpp", mirror=tmp_path / "empty")


def test_hub_download_offline_is_one_clear_error(layout, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WmtpError, match=r"cannot reach the hub .*--mirror DIR"):
        download_dataset(layout, load_catalog(), "mbpp")


def test_mbpp_and_humaneval_hub_parquet_layouts(layout, tmp_path: Path, mirrors: Path):
    """The hub serves MBPP as full/{prompt,train,validation,test}-*.parquet and HumanEval as
    openai_humaneval/test-*.parquet: all rows land in the single raw file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (mirrors / "mbpp/mbpp.jsonl").read_text().splitlines()]
    mirror = tmp_path / "mbpp"
    (mirror / "full").mkdir(parents=True)
    for i, part in enumerate(("prompt", "test", "train", "validation")):
        pq.write_table(
            pa.Table.from_pylist(rows[i::4]), mirror / "full" / f"{part}-00000-of-00001.parquet"
        )
    source = download_dataset(layout, load_catalog(), "mbpp", mirror=mirror)
    assert source["raw_files"]["mbpp.jsonl"]["rows"] == len(rows)
    assert len(source["upstream_files"]) == 4

    with gzip.open(humaneval_source(), "rt") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    mirror = tmp_path / "humaneval"
    (mirror / "openai_humaneval").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(problems), mirror / "openai_humaneval" / "test-00000-of-00001.parquet"
    )
    download_dataset(layout, load_catalog(), "humaneval", mirror=mirror)
    raw = layout.dataset("humaneval").raw_split("HumanEval").read_text().splitlines()
    assert [json.loads(line) for line in raw] == problems


def _sizes(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def test_the_disk_factors_cover_what_the_fixtures_really_write(prepared, mirrors: Path):
    """The free-space estimate (JSONL larger than Parquet, plus prepare's outputs) is at
    least what each fixture dataset really takes."""
    from weighted_mtp.data.download import output_space

    for name in ("codecontests", "mbpp", "humaneval"):
        upstream = [
            (p.relative_to(mirrors / name).as_posix(), p.stat().st_size)
            for p in (mirrors / name).rglob("*")
            if p.is_file()
        ]
        paths = prepared.dataset(name)
        written = _sizes(paths.raw.glob("*.jsonl")) + _sizes(paths.processed.glob("*"))
        assert written <= output_space(name, upstream), name


def test_the_free_space_check_counts_the_jsonl_and_prepared_outputs(
    layout, mirrors: Path, monkeypatch
):
    """Free space for the Parquet alone is not enough: the check refuses before writing."""
    import shutil as shutil_module
    from collections import namedtuple

    parquet = _sizes((mirrors / "codecontests").rglob("*.parquet"))
    usage = namedtuple("usage", "total used free")
    free = (64 << 20) + 2 * parquet  # the Parquet and the headroom fit, the outputs do not
    monkeypatch.setattr(shutil_module, "disk_usage", lambda _path: usage(0, 0, free))
    with pytest.raises(WmtpError, match="not enough free disk for codecontests raw and prepared"):
        download_dataset(layout, load_catalog(), "codecontests", mirror=mirrors / "codecontests")
    assert not list(layout.dataset("codecontests").raw.glob("*.jsonl"))
