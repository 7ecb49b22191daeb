"""THE processed-record schema, defined once, and the check that a record says something.

Every processed record is `{"prompt", "response", "metadata"}`: the prompt is rendered from
`weighted_mtp.assets.prompt_template` (the one prompt template), the response is the code
only. The end of sequence is the token the tokenizer appends, never text in the response.
"""

from __future__ import annotations

import re

from weighted_mtp import assets
from weighted_mtp.assets.prompt_template import PROMPT_TEMPLATE
from weighted_mtp.assets.rows import NULL_TEXTS

_SECTIONS = re.compile(
    r"### Instruction:\n(?P<instruction>.*?)\n\n### Input:\n(?P<input>.*?)\n\n"
    r"### Evaluation Notes:\n(?P<notes>.*)\n\n### Response:\n\Z",
    re.DOTALL,
)


def hollow_sections(prompt: str, response: str) -> list[str]:
    """The sections of a record (instruction, input, notes, response) that are empty or
    the text of a null: a prompt or an answer that says nothing."""
    match = _SECTIONS.search(prompt)
    sections = dict(match.groupdict()) if match else {"prompt": ""}
    sections["response"] = response
    return [name for name, text in sections.items() if text.strip() in NULL_TEXTS | {""}]


_METADATA = {
    "type": "object",
    "required": [
        "task_id",
        "sample_id",
        "source",
        "is_correct",
        "has_tests",
        "language",
        "shortened_prompt",
        "truncated_response",
    ],
    "properties": {
        "task_id": {
            "type": "string",
            "minLength": 1,
            "description": "The problem; shared by "
            "all samples of one problem and never by two splits.",
        },
        "sample_id": {"type": "string", "minLength": 1, "description": "Unique per record."},
        "source": {"enum": list(assets.DATASETS)},
        "is_correct": {
            "type": "boolean",
            "description": "Whether the response passes the "
            "problem's tests (CodeContests: solutions vs incorrect_solutions).",
        },
        "has_tests": {"type": "boolean"},
        "language": {"type": "string"},
        "shortened_prompt": {
            "type": "boolean",
            "description": "The problem statement was shortened to fit the maximum length.",
        },
        "truncated_response": {
            "type": "boolean",
            "description": "The code was cut to fit (only with --truncate-code).",
        },
        "difficulty": {"type": "integer"},
        "origin": {"type": "string", "description": "Contest platform (CodeContests)."},
        "cf_rating": {"type": "integer"},
        "cf_tags": {"type": "array", "items": {"type": "string"}},
        "entry_point": {"type": "string"},
        "num_tests": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": True,
}

RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://weighted-mtp/schemas/processed-record.json",
    "title": "weighted-mtp processed record",
    "description": (
        "One training/evaluation sample. prompt = the Alpaca-style template "
        f"{PROMPT_TEMPLATE!r}; response = the solution code exactly as in the source (line "
        "endings normalised to \\n). Token length = BOS + prompt + response + EOS."
    ),
    "type": "object",
    "required": ["prompt", "response", "metadata"],
    "properties": {
        "prompt": {
            "type": "string",
            "pattern": "### Instruction:\\n[\\s\\S]*### Input:\\n[\\s\\S]*"
            "### Evaluation Notes:\\n[\\s\\S]*### Response:\\n$",
        },
        "response": {"type": "string", "minLength": 1},
        "metadata": _METADATA,
    },
    "additionalProperties": False,
}
