import jsonschema

from weighted_mtp.assets.prompt_template import PROMPT_TEMPLATE, render_prompt
from weighted_mtp.assets.rows import normalize_newlines
from weighted_mtp.data.template import RECORD_SCHEMA


def _record(prompt: str) -> dict:
    return {
        "prompt": prompt,
        "response": "print(1)\n",
        "metadata": {
            "task_id": "t",
            "sample_id": "t#0",
            "source": "mbpp",
            "is_correct": True,
            "has_tests": True,
            "language": "python3",
            "shortened_prompt": False,
            "truncated_response": False,
        },
    }


def test_prompt_has_the_sections_in_order_and_ends_in_response():
    prompt = render_prompt("Add numbers.", "1 2", "Judged by tests.")
    sections = [
        "### Instruction:\nAdd numbers.",
        "### Input:\n1 2",
        "### Evaluation Notes:\nJudged by tests.",
    ]
    positions = [prompt.index(s) for s in sections]
    assert positions == sorted(positions)
    assert prompt.endswith("### Response:\n")
    assert "</s>" not in PROMPT_TEMPLATE


def test_schema_is_valid_2020_12_and_accepts_a_rendered_record():
    jsonschema.Draft202012Validator.check_schema(RECORD_SCHEMA)
    validator = jsonschema.Draft202012Validator(RECORD_SCHEMA)
    assert not list(validator.iter_errors(_record(render_prompt("a", "b", "c"))))


def test_schema_rejects_broken_records():
    validator = jsonschema.Draft202012Validator(RECORD_SCHEMA)
    no_response_marker = _record("### Instruction:\nx\n")
    assert list(validator.iter_errors(no_response_marker))
    missing = _record(render_prompt("a", "b", "c"))
    del missing["metadata"]["is_correct"]
    assert list(validator.iter_errors(missing))
    extra = {**_record(render_prompt("a", "b", "c")), "eos": "</s>"}
    assert list(validator.iter_errors(extra))


def test_newlines_are_normalised():
    assert normalize_newlines("a\r\nb\rc\n") == "a\nb\nc\n"
