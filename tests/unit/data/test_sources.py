from pathlib import Path

import pytest

from weighted_mtp.assets.rows import field
from weighted_mtp.data.sources import iter_parquet_rows
from weighted_mtp.errors import WmtpError


def test_parquet_rows_stream_nested_structs(mirrors: Path):
    import pyarrow.parquet as pq

    path = mirrors / "codecontests/data/train-00000-of-00001.parquet"
    assert pq.ParquetFile(path).num_row_groups > 1
    rows = list(iter_parquet_rows(path))
    assert len(rows) == pq.ParquetFile(path).metadata.num_rows
    assert set(rows[0]["solutions"]) == {"language", "solution"}
    assert rows[0]["time_limit"] == {"seconds": 2, "nanos": 0}


def test_corrupt_parquet_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "train-0.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(WmtpError, match="cannot read Parquet") as exc:
        list(iter_parquet_rows(bad))
    assert str(bad) in exc.value.line()


def test_missing_field_names_line_and_field(tmp_path: Path):
    with pytest.raises(WmtpError, match="line 7: missing field 'code'"):
        field({"text": "t"}, "code", tmp_path / "mbpp.jsonl", 7)
