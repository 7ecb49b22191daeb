import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

from tests.helpers import invoke, read_records
from weighted_mtp.assets.prompt_template import SHORTENED_MARKER
from weighted_mtp.data.prepare import fit_prefix, prepare_dataset
from weighted_mtp.data.tokens import Tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.hashing import sha256_file
from weighted_mtp.storage.layout import Layout


def _raw_solutions(raw: Path) -> dict[str, str]:
    """Every Python 3 solution of the raw files, by task and kind, as in the source."""
    codes = {}
    for part in raw.glob("*.jsonl"):
        for line in part.read_text().splitlines():
            row = json.loads(line)
            for key, tag in (("solutions", "c"), ("incorrect_solutions", "i")):
                block = row[key]
                for i, (lang, code) in enumerate(
                    zip(block["language"], block["solution"], strict=True)
                ):
                    if lang == 3:
                        codes[f"{row['name']}#python3-{tag}{i}"] = code
    return codes


def test_lengths_fit_and_responses_are_the_source_code(downloaded, sp_model_path):
    summary = prepare_dataset(downloaded, "codecontests", max_length=1024, tokenizer=sp_model_path)
    paths = downloaded.dataset("codecontests")
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    codes = _raw_solutions(paths.raw)
    for split in ("train", "validation", "test"):
        records = read_records(paths.split(split))
        assert len(records) == summary["splits"][split]["records"] > 0
        for record in records:
            total = 1 + len(sp.encode(record["prompt"])) + len(sp.encode(record["response"])) + 1
            assert total <= 1024
            assert record["response"] == codes[record["metadata"]["sample_id"]]
            assert "</s>" not in record["response"]
            assert record["metadata"]["sample_id"].startswith(record["metadata"]["task_id"])


def test_long_statements_are_shortened_keeping_input_and_examples(downloaded, sp_model_path):
    summary = prepare_dataset(downloaded, "codecontests", tokenizer=sp_model_path)
    records = read_records(downloaded.dataset("codecontests").split("train"))
    shortened = [r for r in records if r["metadata"]["shortened_prompt"]]
    assert len(shortened) == summary["splits"]["train"]["shortened"] > 0
    for record in shortened:
        prompt = record["prompt"]
        assert SHORTENED_MARKER.strip() in prompt
        assert "### Input:\nInput\n\nThe only line contains" in prompt
        assert "Examples\n\nInput\n\n1 " in prompt


def test_code_that_cannot_fit_is_dropped_or_cut_on_request(downloaded, sp_model_path):
    paths = downloaded.dataset("codecontests")
    dropped = prepare_dataset(downloaded, "codecontests", tokenizer=sp_model_path)
    assert sum(s["dropped"] for s in dropped["splits"].values()) > 0
    assert not any(r["metadata"]["truncated_response"] for r in read_records(paths.split("train")))

    cut = prepare_dataset(downloaded, "codecontests", tokenizer=sp_model_path, truncate_code=True)
    assert sum(s["dropped"] for s in cut["splits"].values()) == 0
    codes = _raw_solutions(paths.raw)
    truncated = [
        r for r in read_records(paths.split("train")) if r["metadata"]["truncated_response"]
    ]
    assert len(truncated) == cut["splits"]["train"]["truncated"] > 0
    for record in truncated:
        original = codes[record["metadata"]["sample_id"]]
        assert original.startswith(record["response"]) and record["response"] != original


def test_same_seed_same_bytes_from_the_function_and_the_cli(downloaded, sp_model_path, tmp_path):
    copy = Layout(shutil.copytree(downloaded.root, tmp_path / "copy"))
    prepare_dataset(downloaded, "mbpp", tokenizer=sp_model_path)
    first = {p.name: p.read_bytes() for p in downloaded.dataset("mbpp").processed.iterdir()}
    args = ["--max-length", "2048", "--seed", "42", "--tokenizer", str(sp_model_path)]
    result = invoke("data", "prepare", "mbpp", *args, root=copy.root)
    assert result.exit_code == 0, result.output
    out = copy.dataset("mbpp").processed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert list((out.parent / "stats").glob("*_summary.json"))


def test_summary_counts_and_checksums(downloaded, sp_model_path):
    summary = prepare_dataset(downloaded, "humaneval", tokenizer=sp_model_path)
    paths = downloaded.dataset("humaneval")
    assert list(summary["splits"]) == ["test"]
    assert not paths.split("train").exists()
    test = summary["splits"]["test"]
    assert test["records"] == test["correct"] == test["tasks"] == 164
    for kind in ("prompt", "response", "total"):
        stats = test["tokens"][kind]
        assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert summary["files"] == {
        "test.jsonl": sha256_file(paths.split("test")),
        "schema.json": sha256_file(paths.schema),
    }
    assert json.loads(paths.summaries()[-1].read_text()) == summary


def test_a_task_in_two_splits_fails_before_anything_is_written(downloaded, sp_model_path):
    paths = downloaded.dataset("codecontests")
    train_row = paths.raw_split("train").read_text().splitlines()[0]
    with paths.raw_split("test").open("a") as handle:
        handle.write(train_row + "\n")
    with pytest.raises(WmtpError, match="appears in both the test and the train split"):
        prepare_dataset(downloaded, "codecontests", tokenizer=sp_model_path)
    assert not list(paths.processed.iterdir())
    assert not paths.summaries()


def test_bad_raw_line_names_file_and_line_and_keeps_old_outputs(downloaded, sp_model_path):
    paths = downloaded.dataset("mbpp")
    prepare_dataset(downloaded, "mbpp", tokenizer=sp_model_path)
    before = {p.name: p.read_bytes() for p in paths.processed.iterdir()}
    with paths.raw_split("mbpp").open("ab") as handle:
        handle.write(b'{"task_id": 999, "text": "\xff"}\n')
    lines = len(paths.raw_split("mbpp").read_bytes().splitlines())
    with pytest.raises(WmtpError, match=f"line {lines} is not UTF-8") as exc:
        prepare_dataset(downloaded, "mbpp", tokenizer=sp_model_path)
    assert "mbpp.jsonl" in exc.value.line()
    assert {p.name: p.read_bytes() for p in paths.processed.iterdir()} == before


def test_fit_prefix_recounts_until_it_fits(sp_model_path):
    tokenizer = Tokenizer(sp_model_path)
    text = "def héllo(world):\n    return [w * 2 for w in world]  # 😀 done\n" * 20
    wrap = "Header:\n{}\nFooter".format
    base = tokenizer.count(wrap(""))
    ratio = len(text) / tokenizer.count(text)
    for budget in (base, base + 1, base + 11, base + 54, base + 194):
        for guess in (budget, 10 * budget, 10_000):  # also badly wrong guesses
            fitted, tokens = fit_prefix(text, wrap, tokenizer.count, budget, guess, ratio)
            assert tokens == tokenizer.count(fitted) <= budget
            assert fitted.startswith("Header:\n") and text.startswith(fitted[8:-7])


def test_lines_are_exactly_json_dumps_of_the_record(prepared):
    for name in ("codecontests", "humaneval"):
        path = prepared.dataset(name).split("test")
        for line in path.read_text(encoding="utf-8").splitlines():
            assert json.dumps(json.loads(line), ensure_ascii=False) == line


def test_train_record_identical_to_a_held_out_one_is_refused(downloaded, sp_model_path):
    """Two problems with different names but the same text and solution, one in test and
    one in train: the train copy is dropped and counted."""
    paths = downloaded.dataset("codecontests")
    test_row = json.loads(paths.raw_split("test").read_text().splitlines()[0])
    twin = {**test_row, "name": test_row["name"] + " (mirror)"}
    with paths.raw_split("train").open("a") as handle:
        handle.write(json.dumps(twin) + "\n")
    summary = prepare_dataset(downloaded, "codecontests", tokenizer=sp_model_path)
    assert summary["splits"]["train"]["cross_split_duplicates"] > 0
    train_tasks = {r["metadata"]["task_id"] for r in read_records(paths.split("train"))}
    assert twin["name"] not in train_tasks
    assert summary["splits"]["train"]["tasks"] == len(train_tasks)
