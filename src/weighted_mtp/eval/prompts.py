"""Evaluation prompts fitted to the model's context, leaving room for the completion.

A sample's sequence is BOS + prompt + up to `max_new_tokens` generated tokens, and it must
fit the model's context, so a prompt gets `context - max_new_tokens` tokens (BOS included).
Every task keeps the same completion budget; a prompt over its budget is cut, never the
completion. A cut keeps the END of the prompt: the prompt ends with the input (the function
signature, the tests shown), the notes and `### Response:`, which is what the model
continues; cut there, it would go on writing the prompt instead of answering it.

1. The whole prompt, when it fits.
2. Else the statement shortened as preparation shortens training prompts (its head kept,
   then `[... statement shortened ...]`; input and notes whole), the form the model
   was trained on.
3. Else (the input and notes alone are over the budget, e.g. MBPP task 493's long asserts)
   as much of the whole prompt's tail as fits: the model still sees the end of the input
   and `### Response:`.

results.json lists the tasks of cases 2 and 3 by id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from weighted_mtp.assets.prompt_template import PromptParts
from weighted_mtp.data.prepare import fit_prefix

Fit = Literal["whole", "statement shortened", "head dropped"]


@dataclass(frozen=True)
class FittedPrompt:
    task_id: str
    text: str
    tokens: int  # BOS included
    full_tokens: int  # the whole prompt's, BOS included
    fit: Fit


def fit_prompt(
    task_id: str, parts: PromptParts, count: Callable[[str], int], budget: int
) -> FittedPrompt:
    """The prompt of `parts` within `budget` tokens as `count` (BOS included) measures it."""
    whole = parts.render()
    whole_tokens = count(whole)
    if whole_tokens <= budget:
        return FittedPrompt(task_id, whole, whole_tokens, whole_tokens, "whole")
    ratio = len(whole) / max(1, whole_tokens)
    text, tokens = fit_prefix(parts.instruction, parts.shortened, count, budget, budget, ratio)
    if tokens <= budget:
        return FittedPrompt(task_id, text, tokens, whole_tokens, "statement shortened")
    # A tail that fits: a prefix of the reversed text whose reversal fits.
    text, tokens = fit_prefix(whole[::-1], lambda kept: kept[::-1], count, budget, budget, ratio)
    return FittedPrompt(task_id, text, tokens, whole_tokens, "head dropped")
