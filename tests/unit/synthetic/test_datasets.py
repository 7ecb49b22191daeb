"""The synthetic upstream mirrors keep the upstream schemas."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from weighted_mtp.assets.benchmarks.codecontests import write_codecontests_mirror
from weighted_mtp.assets.benchmarks.humaneval import humaneval_source, write_humaneval_mirror
from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
from weighted_mtp.storage.atomic import atomic_write

CODECONTESTS_FIELDS = [
    "name",
    "description",
    "public_tests",
    "private_tests",
    "generated_tests",
    "source",
    "difficulty",
    "solutions",
    "incorrect_solutions",
    "cf_contest_id",
    "cf_index",
    "cf_points",
    "cf_rating",
    "cf_tags",
    "is_description_translated",
    "untranslated_description",
    "time_limit",
    "memory_limit_bytes",
    "input_file",
    "output_file",
]


def test_codecontests_parquet_layout_and_nested_schema(tmp_path: Path):
    out = write_codecontests_mirror(tmp_path, atomic_write, n_problems=16, seed=3)
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
        "valid-00000-of-00001.parquet",
    ]
    schema = pq.read_schema(out / "data" / files[1])
    assert schema.names == CODECONTESTS_FIELDS
    assert schema.field("solutions").type == pa.struct(
        [("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))]
    )
    assert schema.field("time_limit").type == pa.struct(
        [("seconds", pa.int64()), ("nanos", pa.int64())]
    )
    rows = pq.read_table(out / "data" / files[1]).to_pylist()
    languages = {lang for row in rows for lang in row["solutions"]["language"]}
    assert {1, 2, 3, 4} <= languages
    assert any(
        len(row["solutions"]["solution"]) != len(set(row["solutions"]["solution"])) for row in rows
    )
    assert max(len(s) for row in rows for s in row["solutions"]["solution"]) > 20_000


def test_codecontests_mirror_is_seeded(tmp_path: Path):
    a = write_codecontests_mirror(tmp_path / "a", atomic_write, n_problems=8, seed=1)
    b = write_codecontests_mirror(tmp_path / "b", atomic_write, n_problems=8, seed=1)
    name = "data/train-00000-of-00001.parquet"
    assert pq.read_table(a / name).equals(pq.read_table(b / name))


def test_mbpp_spans_all_official_ranges(tmp_path: Path):
    rows = [
        json.loads(line)
        for line in (write_mbpp_mirror(tmp_path, atomic_write, n_tasks=20) / "mbpp.jsonl")
        .read_text()
        .splitlines()
    ]
    ids = [row["task_id"] for row in rows]
    assert ids[0] == 1 and ids[-1] == 974
    assert any(11 <= i <= 510 for i in ids) and any(511 <= i <= 600 for i in ids)
    assert set(rows[0]) == {
        "task_id",
        "text",
        "code",
        "test_list",
        "test_setup_code",
        "challenge_test_list",
    }


def test_humaneval_is_the_real_file(tmp_path: Path):
    out = write_humaneval_mirror(tmp_path, atomic_write) / "HumanEval.jsonl.gz"
    assert out.read_bytes() == humaneval_source().read_bytes()
    with gzip.open(out, "rt") as handle:
        assert sum(1 for line in handle if line.strip()) == 164
