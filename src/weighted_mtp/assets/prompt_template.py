"""THE prompt template, defined once: how a task's prompt parts become the text a model
reads, in training records and in evaluation alike.

The prompt is Alpaca-style: a preamble, then `### Instruction:` (the problem), `### Input:`
(input format, examples or the function signature), `### Evaluation Notes:` (how an answer
is judged) and it ends with `### Response:` and a newline, so the response (code only)
follows directly. A benchmark module says what goes in each part (`PromptParts`).
"""

from __future__ import annotations

from dataclasses import dataclass

PREAMBLE = (
    "Below is an instruction that describes a programming task, paired with an input that "
    "provides further context. Write a response that solves the task."
)
PROMPT_TEMPLATE = (
    PREAMBLE + "\n\n"
    "### Instruction:\n{instruction}\n\n"
    "### Input:\n{input}\n\n"
    "### Evaluation Notes:\n{notes}\n\n"
    "### Response:\n"
)

# Appended where a problem statement was shortened to fit --max-length.
SHORTENED_MARKER = "\n[... statement shortened ...]"


def render_prompt(instruction: str, input_text: str, notes: str) -> str:
    return PROMPT_TEMPLATE.format(
        instruction=instruction.strip() or "(see input)",
        input=input_text.strip() or "(none)",
        notes=notes.strip(),
    )


@dataclass(frozen=True)
class PromptParts:
    """A task's prompt before rendering: the problem statement, its input section, and how
    an answer is judged."""

    instruction: str
    input_text: str
    notes: str

    def render(self) -> str:
        return render_prompt(self.instruction, self.input_text, self.notes)

    def shortened(self, kept: str) -> str:
        """The prompt with the statement cut to `kept` (a prefix of it) and marked as
        shortened; input and notes stay whole."""
        return render_prompt(kept.rstrip() + SHORTENED_MARKER, self.input_text, self.notes)
