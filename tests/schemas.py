"""The published JSON Schemas of what `wmtp eval` writes (docs/schemas/), for tests that
check a written file against them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).parent.parent / "docs" / "schemas"


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
