"""Upstream files that would put non-standard JSON into raw/, hang the reader or blow up
its memory are refused at download, with one line naming the file and row."""

import json
import os
import threading

import pytest

from weighted_mtp.catalog import load_catalog
from weighted_mtp.data.download import download_dataset
from weighted_mtp.errors import WmtpError

ROW = {"task_id": 1, "text": "t", "code": "pass", "test_list": []}


def _download(layout, mirror, name="mbpp"):
    return download_dataset(layout, load_catalog(), name, mirror=mirror)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "2e308"])
def test_non_standard_numbers_in_a_jsonl_mirror_are_refused(layout, tmp_path, literal):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    lines = [json.dumps(ROW), json.dumps(ROW).replace('"task_id": 1', f'"task_id": {literal}')]
    (mirror / "mbpp.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(WmtpError, match="line 2 is not standard JSON") as exc:
        _download(layout, mirror)
    assert "mbpp.jsonl" in exc.value.line()
    assert not layout.dataset("mbpp").raw_split("mbpp").exists()


@pytest.mark.parametrize("value", [float("inf"), float("nan"), float("-inf")])
def test_a_non_finite_parquet_value_is_refused_naming_the_row(layout, tmp_path, value):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mirror = tmp_path / "mirror"
    (mirror / "data").mkdir(parents=True)
    table = pa.table({"name": ["a", "b", "c"], "difficulty": [1.0, 2.0, value]})
    pq.write_table(table, mirror / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(WmtpError, match="row 3 holds a NaN or Infinity") as exc:
        _download(layout, mirror, "codecontests")
    assert "test-00000-of-00001.parquet" in exc.value.line()
    assert not list(layout.dataset("codecontests").raw.glob("*.jsonl"))


def test_a_row_longer_than_the_line_limit_is_refused_at_download(layout, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    long_row = {**ROW, "code": "x" * 3000}
    (mirror / "mbpp.jsonl").write_text(json.dumps(ROW) + "\n" + json.dumps(long_row) + "\n")
    monkeypatch.setenv("WMTP_MAX_LINE_BYTES", "2048")
    with pytest.raises(WmtpError, match="line 2 is longer than 2,048 bytes"):
        _download(layout, mirror)


def _fifo_mirror(tmp_path, name):
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    os.mkfifo(mirror / name)
    return mirror


@pytest.mark.parametrize(
    ("dataset", "name"),
    [("mbpp", "mbpp.jsonl"), ("humaneval", "HumanEval.jsonl.gz"), ("codecontests", "test.jsonl")],
)
def test_a_fifo_in_a_dataset_mirror_is_refused_not_waited_on(layout, tmp_path, dataset, name):
    mirror = _fifo_mirror(tmp_path, name)
    outcome = []
    worker = threading.Thread(
        target=lambda: outcome.append(_catch(lambda: _download(layout, mirror, dataset))),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # unblock the reader so the test run can end
        with open(mirror / name, "wb"):
            pass
        pytest.fail("download blocked on the FIFO")
    assert isinstance(outcome[0], WmtpError)
    assert "is a FIFO, not a regular file" in outcome[0].line() and name in outcome[0].line()


def test_a_fifo_in_the_upstream_layout_is_refused(layout, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "full").mkdir(parents=True)
    os.mkfifo(mirror / "full" / "prompt-00000-of-00001.parquet")
    with pytest.raises(WmtpError, match="mirror file is a FIFO"):
        _download(layout, mirror)


def test_a_symlink_to_a_regular_file_is_read(layout, tmp_path):
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps(ROW) + "\n")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "mbpp.jsonl").symlink_to(elsewhere)
    assert _download(layout, mirror)["raw_files"]["mbpp.jsonl"]["rows"] == 1


def _catch(action):
    try:
        action()
    except Exception as exc:
        return exc
    return None
