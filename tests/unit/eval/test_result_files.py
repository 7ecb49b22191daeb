"""The typed records of results.json and comparison.json (and the suite's comparison.json):
the schemas published under docs/schemas/ are the ones the types generate, a record
validates against its schema, and a file of another shape is one error when read back."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.schemas import PUBLISHED, SCHEMAS, assert_matches_schema, schema_text
from weighted_mtp.errors import WmtpError
from weighted_mtp.eval.result_files import ComparisonRecord, EvaluationResults, read_record


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_the_published_schemas_are_the_ones_the_types_generate(name) -> None:
    published = (SCHEMAS / name).read_text(encoding="utf-8")
    assert published == schema_text(PUBLISHED[name]), (
        f"docs/schemas/{name} is stale: run `uv run python -m tests.schemas`"
    )
    jsonschema.Draft202012Validator.check_schema(json.loads(published))


def test_a_schema_refuses_a_missing_a_mistyped_and_an_unknown_key(tmp_path: Path) -> None:
    comparison = {
        "baseline": "a",
        "runs": [
            {"name": n, "label": n, "weights_sha256": "0" * 64, "adapter_sha256": None,
             "base_weights_sha256": None}
            for n in ("a", "b")
        ],
        "settings": {
            "datasets": ["humaneval"], "ks": [1],
            "generation": {"n": 1, "temperature": 0.0, "top_p": 0.95, "max_new_tokens": 8,
                           "speculative": False, "limit": 3, "seed": 0, "tests": "base",
                           "draft_heads": None, "isolation": True},
            "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0, "method": "p"},
            "test": None,
        },
        "datasets": {},
        "tool_version": "0",
    }  # fmt: skip
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comparison))
    assert_matches_schema(path, "comparison.schema.json")
    assert read_record(ComparisonRecord, path).runs[1].label == "b"
    for broken in (
        {k: v for k, v in comparison.items() if k != "baseline"},
        comparison | {"baseline": 3},
        comparison | {"extra": 1},
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(AssertionError, match=r"does not match comparison\.schema\.json"):
            assert_matches_schema(path, "comparison.schema.json")


def test_a_results_file_of_another_shape_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"model": {"name": "m"}, "pass_at_k": {}}))
    with pytest.raises(WmtpError, match=r"not a results\.json this version reads") as caught:
        read_record(EvaluationResults, path)
    assert str(path) in caught.value.line()
