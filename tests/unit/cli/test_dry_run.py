"""`wmtp models|data download NAME --dry-run [--json]`: the plan, with no network and nothing
written (the hub is unreachable in tests: any request would fail)."""

import json

from typer.testing import CliRunner

from weighted_mtp.cli import app
from weighted_mtp.errors import UsageError

SHARD_1 = "ee766e6759aa2cdd4d3749b25d37b38614c95bfa9cada724a1ba76b04117a9df"
SHARD_2 = "c9fde8a274acfc664a1e726dfd001ce43d86909629f666fd14544fe4d36f4b6d"
TOKENIZER = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def _plan(tmp_path, *args):
    result = CliRunner().invoke(app, ["--root", str(tmp_path / "s"), *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "s").exists()
    return json.loads(result.output)


def test_the_reference_plan_names_the_real_repo_commit_and_hashes(tmp_path):
    plan = _plan(tmp_path, "models", "download", "ref-sheared-llama-2.7b")
    assert plan["repo"] == "princeton-nlp/Sheared-LLaMA-2.7B" and plan["repo_type"] == "model"
    assert len(plan["revision"]) == 40 and int(plan["revision"], 16) >= 0
    files = {f["path"]: f for f in plan["files"]}
    raw = "models_v2/ref-sheared-llama-2.7b/raw/reference_model/"
    assert files["pytorch_model-00001-of-00002.bin"] == {
        "path": "pytorch_model-00001-of-00002.bin",
        "dest": raw + "pytorch_model-00001-of-00002.bin",
        "sha256": SHARD_1,
    }
    assert files["pytorch_model-00002-of-00002.bin"]["sha256"] == SHARD_2
    assert files["config.json"] == {
        "path": "config.json",
        "dest": raw + "config.json",
        "sha256": None,
    }
    assert files["tokenizer.model"]["dest"] == (
        "models_v2/ref-sheared-llama-2.7b/tokenizer/tokenizer.model"
    )
    assert files["tokenizer.model"]["sha256"] == TOKENIZER


def test_a_dataset_plan_lists_the_glob_the_hub_expands(tmp_path):
    plan = _plan(tmp_path, "data", "download", "codecontests", "--revision", "v1")
    assert plan == {
        "repo": "deepmind/code_contests",
        "repo_type": "dataset",
        "revision": "v1",
        "files": [
            {
                "path": "data/*.parquet",
                "dest": "datasets_v2/codecontests/.cache/data/*.parquet",
                "sha256": None,
            }
        ],
    }


def test_the_plain_plan_and_its_refusals(tmp_path):
    result = CliRunner().invoke(
        app, ["--root", str(tmp_path), "models", "download", "meta-llama-mtp", "--dry-run"]
    )
    assert result.exit_code == 0
    assert "facebook/multi-token-prediction (model) at main" in result.output
    assert "7B_1T_4/consolidated.pth -> models_v2/meta-llama-mtp/raw/7B_1T_4/" in result.output
    mirror = CliRunner().invoke(
        app,
        ["models", "download", "meta-llama-mtp", "--dry-run", "--mirror", str(tmp_path)],
    )
    assert isinstance(mirror.exception, UsageError) and "drop --mirror" in str(mirror.exception)
