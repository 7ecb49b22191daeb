"""Records to batches: the target mask, padding, and the order every rank agrees on."""

from __future__ import annotations

import json

import pytest
import torch

from weighted_mtp.data.tokens import Tokenizer
from weighted_mtp.errors import WmtpError
from weighted_mtp.train.batches import BatchPlan, Example, Sharding, collate, read_examples


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def record(i, prompt="Write x.", response="print(1)", correct=True):
    meta = {"task_id": f"t{i // 2}", "sample_id": f"s{i}", "is_correct": correct}
    return {"prompt": prompt, "response": response, "metadata": meta}


def test_tokens_are_bos_prompt_response_eos_and_only_response_and_eos_are_targets(
    tmp_path, sp_model_path
):
    tok = Tokenizer(sp_model_path)
    path = write_records(tmp_path / "train.jsonl", [record(0, "Add two numbers.", "print(a + b)")])
    (example,) = read_examples(path, tok, max_len=512, correct_only=True)
    prompt, response = tok.sp.encode("Add two numbers."), tok.sp.encode("print(a + b)")
    assert example.tokens == [tok.sp.bos_id(), *prompt, *response, tok.sp.eos_id()]
    assert example.prompt_len == 1 + len(prompt)
    batch = collate([example, Example([1, 5, 6], 2, True, "t", "s")], pad_id=tok.sp.eos_id())
    assert batch.tokens.shape == (2, len(example.tokens))
    targets = batch.tokens[0][batch.loss_mask[0]].tolist()
    assert targets == [*response, tok.sp.eos_id()]
    assert batch.loss_mask[1].tolist() == [False, False, True] + [False] * (len(example.tokens) - 3)
    assert batch.lengths.tolist() == [len(example.tokens), 3]


def test_incorrect_records_are_filtered_and_a_too_long_one_is_one_error(tmp_path, sp_model_path):
    tok = Tokenizer(sp_model_path)
    records = [record(0), record(1, correct=False), record(2, response="x = 1\n" * 200)]
    path = write_records(tmp_path / "train.jsonl", records)
    with pytest.raises(WmtpError, match=r"line 3 \(sample s2\) has \d+ tokens, more than .* 64"):
        read_examples(path, tok, max_len=64, correct_only=True)
    kept = read_examples(path, tok, max_len=4096, correct_only=True)
    assert [e.sample_id for e in kept] == ["s0", "s2"]
    assert len(read_examples(path, tok, max_len=4096, correct_only=False)) == 3


def examples(n):
    return [Example([1] + [7] * (i % 5 + 1) + [2], 1, True, f"t{i}", f"s{i}") for i in range(n)]


def ids(batches):
    return [s for b in batches for s in b.sample_ids]


def test_every_rank_gets_an_equal_share_of_the_same_global_batch():
    data = examples(23)
    one = BatchPlan(data, Sharding(8, 2, 1), seed=5, pad_id=0)
    two = BatchPlan(data, Sharding(8, 2, 2), seed=5, pad_id=0)
    assert one.steps_per_epoch == 2  # 23 // 8: the remainder is left out
    for step in range(4):
        shares = [two.micro_batches(step, rank) for rank in (0, 1)]
        assert [len(s) for s in shares] == [2, 2] and all(
            b.tokens.shape[0] == 2 for s in shares for b in s
        )
        assert sorted(ids(shares[0]) + ids(shares[1])) == sorted(ids(one.micro_batches(step, 0)))
    epoch0 = ids(one.micro_batches(0, 0)) + ids(one.micro_batches(1, 0))
    assert len(set(epoch0)) == 16
    assert ids(one.micro_batches(2, 0)) != ids(one.micro_batches(0, 0))  # epoch 1 reshuffled
    again = BatchPlan(data, Sharding(8, 2, 1), seed=5, pad_id=0)
    assert ids(again.micro_batches(1, 0)) == ids(one.micro_batches(1, 0))
    other = BatchPlan(data, Sharding(8, 2, 1), seed=6, pad_id=0)
    assert ids(other.micro_batches(0, 0)) != ids(one.micro_batches(0, 0))


def test_a_split_smaller_than_one_batch_is_refused():
    with pytest.raises(WmtpError, match="do not fill one batch"):
        BatchPlan(examples(3), Sharding(4, 2, 1), seed=0, pad_id=0)


def test_padding_is_never_a_target():
    batch = collate(examples(4), pad_id=0)
    assert not batch.loss_mask[batch.tokens == 0].any()
    assert torch.equal(batch.loss_mask.sum(1), batch.lengths - 1)
