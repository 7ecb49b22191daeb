import pytest

from tests.helpers import read_records
from weighted_mtp.data.small import SMALL_LIMITS, build_small
from weighted_mtp.errors import WmtpError


def test_limits_kinds_and_disjointness(prepared):
    small = prepared.small("codecontests")
    records = {s: read_records(small.split(s)) for s in ("train", "validation", "test")}
    assert len(records["train"]) == SMALL_LIMITS["train"]
    for split, rows in records.items():
        assert 0 < len(rows) <= SMALL_LIMITS[split]
        kinds = {r["metadata"]["is_correct"] for r in rows}
        assert kinds == {True, False}
    tasks = {s: {r["metadata"]["task_id"] for r in rows} for s, rows in records.items()}
    assert not tasks["train"] & tasks["validation"] and not tasks["train"] & tasks["test"]
    full = {
        line for line in prepared.dataset("codecontests").split("train").read_text().splitlines()
    }
    assert all(line in full for line in small.split("train").read_text().splitlines())


def test_seeded_selection(prepared):
    path = prepared.small("humaneval").split("test")
    first = path.read_bytes()
    build_small(prepared, "humaneval", seed=42)
    assert path.read_bytes() == first
    build_small(prepared, "humaneval", seed=7)
    assert path.read_bytes() != first
    assert not prepared.small("humaneval").split("train").exists()


def test_a_record_without_its_sample_id_is_one_clear_error(prepared):
    path = prepared.dataset("mbpp").split("test")
    path.write_text('{"prompt": "p", "response": "r", "metadata": {"is_correct": true}}\n')
    with pytest.raises(WmtpError, match="line 1: missing field 'sample_id'") as exc:
        build_small(prepared, "mbpp")
    assert str(path) in exc.value.line()
