"""The key table of docs/training.md and the JSON Schema of config files, made from
`TrainConfig`'s fields, so the documentation cannot drift from the config.

    uv run python -m weighted_mtp.train.config_docs           # rewrite both under docs/
    uv run python -m weighted_mtp.train.config_docs --check   # exit 1 if either is stale

A test (`tests/unit/train/test_config_docs.py`) fails when the files differ from these.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from weighted_mtp.assets import TRAINING_RUNS
from weighted_mtp.storage.atomic import write_text
from weighted_mtp.train.config import Option, TrainConfig, bounds_text, fields, option_of

TABLE_START = "<!-- config table: made from train/config.py (weighted_mtp.train.config_docs) -->"
TABLE_END = "<!-- end of the config table -->"
SCHEMA = "train-config.schema.json"


def _default(value: Any) -> str:
    import yaml

    dumped: str = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return dumped.removesuffix("\n...\n").strip()


def _offered(option: Option | None) -> str:
    if option is None:
        return ""
    runs = [c for c in option.commands if c != "suite"]
    where = "every experiment" if set(runs) == set(TRAINING_RUNS) else ", ".join(runs)
    return f"`{option.decls}` ({where}{', suite' if 'suite' in option.commands else ''})"


def config_table() -> str:
    """Every key: its default, its meaning with its bounds, and the option that sets it."""
    defaults = TrainConfig().to_dict()
    rows = ["| key | default | meaning | option |", "|-----|---------|---------|--------|"]
    for key, field in fields():
        section, _, leaf = key.rpartition(".")
        default = (defaults[section] if section else defaults)[leaf]
        bounds = bounds_text(field)
        meaning = f"{field.description}{'; ' + bounds if bounds else ''}".replace("|", "\\|")
        rows.append(
            f"| `{key}` | `{_default(default)}` | {meaning} | {_offered(option_of(field))} |"
        )
    return "\n".join(rows)


def config_schema() -> str:
    """The JSON Schema of a config file (`--config FILE`, a run's config.yaml)."""
    schema = TrainConfig.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def made(docs: Path) -> dict[Path, str]:
    """What the generated files under `docs` hold when they are up to date."""
    page = docs / "training.md"
    text = page.read_text(encoding="utf-8")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return {
        page: f"{text[:start]}\n\n{config_table()}\n\n{text[end:]}",
        docs / SCHEMA: config_schema(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = [p for p, t in made(args.docs).items() if not p.exists() or p.read_text() != t]
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
        if not args.check:
            write_text(path, made(args.docs)[path])
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
