"""The config's documentation is made from its fields: the key table of docs/training.md and
docs/train-config.schema.json are what `weighted_mtp.train.config_docs` makes now."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from weighted_mtp.train.config import TrainConfig, config_yaml, fields, load_config
from weighted_mtp.train.config_docs import SCHEMA, config_table, made, main

DOCS = Path(__file__).parents[3] / "docs"


def test_the_docs_are_the_config_s():
    """Regenerate and compare: run `uv run python -m weighted_mtp.train.config_docs` after
    changing a field."""
    for path, text in made(DOCS).items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale"


def test_the_table_lists_every_key_once_with_its_default():
    rows = [line.split(" | ") for line in config_table().splitlines()[2:]]
    assert [row[0].strip("| `") for row in rows] == [key for key, _ in fields()]
    documented = {row[0].strip("| `"): yaml.safe_load(row[1].strip("`")) for row in rows}
    assert documented["rho1.kappa"] == 0.6 and documented["n_future"] is None
    assert documented["lora.targets"] == list(TrainConfig().lora.targets)


def test_the_schema_takes_every_packaged_config_and_refuses_what_the_config_refuses():
    schema = json.loads((DOCS / SCHEMA).read_text(encoding="utf-8"))
    configs = resources.files("weighted_mtp.train").joinpath("configs")
    for packaged in configs.iterdir():
        jsonschema.validate(yaml.safe_load(packaged.read_text()), schema)
    jsonschema.validate(yaml.safe_load(config_yaml(load_config(None, micro=True))), schema)
    for bad in ({"rho1": {"kappa": 1.5}}, {"lr": "fast"}, {"warmup": 3}, {"lora": {"r": 0}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_check_reports_a_stale_file_and_writing_mends_it(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    page = (DOCS / "training.md").read_text(encoding="utf-8")
    (docs / "training.md").write_text(page.replace("| `rho1.kappa` |", "| `rho1.kapa` |"))
    assert main(["--docs", str(docs), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["--docs", str(docs)]) == 0
    assert main(["--docs", str(docs), "--check"]) == 0
    assert (docs / "training.md").read_text(encoding="utf-8") == page
