"""The published JSON Schemas of the JSON files `wmtp eval run`, `wmtp eval compare` and
`wmtp train suite` write (docs/schemas/), generated from their record types, and a check of
a written file against them. After changing a record: `uv run python -m tests.schemas`
rewrites them (a test fails while they are stale)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import TypeAdapter

from weighted_mtp.eval.result_files import ComparisonRecord, EvaluationResults
from weighted_mtp.train.suite import SuiteComparison

SCHEMAS = Path(__file__).parent.parent / "docs" / "schemas"
PUBLISHED: dict[str, type[Any]] = {
    "results.schema.json": EvaluationResults,
    "comparison.schema.json": ComparisonRecord,
    "suite-comparison.schema.json": SuiteComparison,
}


def json_schema(kind: type[Any]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a record type. A record is written whole, so
    every field of every record is required, and no other key is allowed: a key written
    outside the types fails the schema."""
    schema: dict[str, Any] = TypeAdapter(kind).json_schema(mode="serialization")
    for record in [schema, *schema.get("$defs", {}).values()]:
        if "properties" in record:
            record["required"] = list(record["properties"])
            record["additionalProperties"] = False
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text(kind: type[Any]) -> str:
    return json.dumps(json_schema(kind), indent=2, ensure_ascii=False) + "\n"


def assert_matches_schema(path: Path, schema: str) -> None:
    """The JSON file `path` validates against the published `schema` (e.g.
    "results.schema.json"); else the test fails naming every problem."""
    published = json.loads((SCHEMAS / schema).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(published)
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(json.loads(path.read_text(encoding="utf-8")))
    ]
    assert not problems, f"{path} does not match {schema}:\n" + "\n".join(problems)


if __name__ == "__main__":
    for name, kind in PUBLISHED.items():
        (SCHEMAS / name).write_text(schema_text(kind), encoding="utf-8")
        print(SCHEMAS / name)
