import json

from weighted_mtp.data.validate import validate_dataset
from weighted_mtp.storage.freshness import is_current


def _failed(report) -> set[str]:
    return {c.name for c in report.failures()}


def test_freshly_prepared_datasets_pass_and_get_stamped(prepared):
    for name in ("codecontests", "mbpp", "humaneval"):
        report = validate_dataset(prepared, name)
        assert report.ok, report.to_dict()
        assert is_current(prepared, name)


def test_one_changed_character_fails(prepared):
    path = prepared.dataset("mbpp").split("test")
    text = path.read_text()
    path.write_text(text.replace("return a + b", "return a - b", 1))
    report = validate_dataset(prepared, "mbpp")
    assert not report.ok and "checksums" in _failed(report)


def test_schema_violation_names_file_and_line(prepared):
    path = prepared.dataset("mbpp").split("validation")
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    del record["metadata"]["is_correct"]
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    report = validate_dataset(prepared, "mbpp")
    check = next(c for c in report.checks if c.name == "records match schema.json")
    assert not check.ok and "validation.jsonl line 2" in check.detail
    assert "is_correct" in check.detail


def test_overlong_record_and_shared_task_fail(prepared):
    paths = prepared.dataset("mbpp")
    train = paths.split("train").read_text().splitlines()
    test_record = json.loads(paths.split("test").read_text().splitlines()[0])
    long_record = json.loads(train[0])
    long_record["response"] = "x = 1\n" * 3000
    leaked = json.loads(train[1])
    leaked["metadata"]["task_id"] = test_record["metadata"]["task_id"]
    copied = dict(test_record)
    paths.split("train").write_text(
        "\n".join([json.dumps(long_record), json.dumps(leaked), json.dumps(copied), *train[2:]])
        + "\n"
    )
    failed = _failed(validate_dataset(prepared, "mbpp"))
    assert {
        "token lengths <= 2048",
        "splits are task-disjoint",
        "sample_ids are unique",
        "no identical prompt+response across splits",
        "checksums",
    } <= failed


def test_small_set_over_limit_fails(prepared):
    small = prepared.small("humaneval").split("test")
    full = prepared.dataset("humaneval").split("test").read_text()
    small.write_text(full)
    report = validate_dataset(prepared, "humaneval")
    check = next(c for c in report.checks if c.name == "small sets")
    assert not check.ok and "164 records > 32" in check.detail


def test_other_tokenizer_or_missing_summary_fails(prepared):
    summary_path = prepared.dataset("mbpp").summaries()[-1]
    summary = json.loads(summary_path.read_text())
    summary["tokenizer"]["sha256"] = "0" * 64
    summary_path.write_text(json.dumps(summary))
    assert "tokenizer" in _failed(validate_dataset(prepared, "mbpp"))
    for path in prepared.dataset("mbpp").summaries():
        path.unlink()
    assert _failed(validate_dataset(prepared, "mbpp")) == {"summary"}


def test_parallel_scan_finds_the_same_problems(prepared, monkeypatch):
    """Files split into many worker jobs: results must not depend on the split."""
    import weighted_mtp.data.validate as validate

    path = prepared.dataset("codecontests").split("train")
    lines = path.read_text().splitlines()
    record = json.loads(lines[40])
    record["metadata"]["sample_id"] = json.loads(lines[3])["metadata"]["sample_id"]
    lines[40] = json.dumps(record)
    lines[77] = lines[77].replace('"is_correct": ', '"is_correct": "no", "x": ', 1)
    path.write_text("\n".join(lines) + "\n")
    serial = validate_dataset(prepared, "codecontests").to_dict()
    monkeypatch.setattr(validate, "CHUNK_BYTES", 20_000)
    assert len(validate.line_chunks(path, validate.CHUNK_BYTES)) > 4
    parallel = validate_dataset(prepared, "codecontests").to_dict()
    assert parallel == serial
    failed = {c["name"]: c["detail"] for c in parallel["checks"] if not c["ok"]}
    assert "sample_ids are unique" in failed
    assert "train.jsonl line 78" in failed["records match schema.json"]


def test_small_set_from_an_older_preparation_fails(prepared, sp_model_path):
    from weighted_mtp.data.prepare import prepare_dataset

    prepare_dataset(prepared, "codecontests", tokenizer=sp_model_path, max_length=1024)
    report = validate_dataset(prepared, "codecontests")
    check = next(c for c in report.checks if c.name == "small sets")
    assert not check.ok and "records not in processed/train.jsonl" in check.detail
