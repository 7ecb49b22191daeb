"""Prompts fitted to the tokens the context leaves: whole, else the statement shortened the
way training prompts were, else the prompt's tail, which always ends with `### Response:`."""

from __future__ import annotations

import pytest

from weighted_mtp.assets.prompt_template import SHORTENED_MARKER, PromptParts
from weighted_mtp.eval.prompts import fit_prompt

STATEMENT = " ".join(f"The problem statement goes on, sentence {i}." for i in range(200))
SIGNATURE = "def solve(values: list[int]) -> int:\n"
NOTES = "The answer is judged by hidden unit tests.\nWrite the solution in Python 3."


@pytest.fixture(scope="module")
def count(sp_model_path):
    from weighted_mtp.models.tokenizer import load_sentencepiece

    tokenizer = load_sentencepiece(sp_model_path)
    return lambda text: 1 + len(tokenizer.encode(text))  # BOS + the text


def test_a_prompt_that_fits_is_whole(count) -> None:
    parts = PromptParts("Add two numbers.", SIGNATURE, NOTES)
    fitted = fit_prompt("t", parts, count, 1000)
    assert (fitted.text, fitted.fit) == (parts.render(), "whole")
    assert fitted.tokens == fitted.full_tokens == count(parts.render())


def test_a_long_statement_is_shortened_as_training_prompts_were(count) -> None:
    parts = PromptParts(STATEMENT, SIGNATURE, NOTES)
    statement_free = count(parts.shortened(""))
    budget = statement_free + 100
    fitted = fit_prompt("t", parts, count, budget)
    assert fitted.fit == "statement shortened" and fitted.tokens == count(fitted.text) <= budget
    assert fitted.tokens > budget - 20  # most of the room is used
    kept = fitted.text.split("### Instruction:\n")[1].split(SHORTENED_MARKER)[0]
    assert kept and STATEMENT.startswith(kept)
    rest = f"\n\n### Input:\n{SIGNATURE.strip()}\n\n### Evaluation Notes:\n{NOTES}\n\n"
    assert fitted.text.endswith(f"{SHORTENED_MARKER}{rest}### Response:\n")
    assert fitted.full_tokens == count(parts.render())


def test_when_input_and_notes_alone_are_too_long_the_tail_is_kept(count) -> None:
    asserts = "\n".join(f"assert solve([{i}, {i + 1}]) == {2 * i + 1}" for i in range(300))
    parts = PromptParts("Add the values.", asserts, NOTES)
    budget = 200
    assert count(parts.shortened("")) > budget
    fitted = fit_prompt("t", parts, count, budget)
    whole = parts.render()
    assert fitted.fit == "head dropped" and whole.endswith(fitted.text)
    assert fitted.text.endswith(f"{NOTES}\n\n### Response:\n")
    assert budget - 20 < fitted.tokens == count(fitted.text) <= budget
    assert (fitted.task_id, fitted.full_tokens) == ("t", count(whole))


def test_a_budget_of_one_token_keeps_only_bos(count) -> None:
    fitted = fit_prompt("t", PromptParts("x", "y", NOTES), count, 1)
    assert (fitted.text, fitted.tokens, fitted.fit) == ("", 1, "head dropped")
