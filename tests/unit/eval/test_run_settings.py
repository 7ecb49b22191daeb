"""`eval run`'s settings, model context, device and output folder are checked up front: a bad
value is one usage error before any weights load (the command never gets to loading here:
the storage model has its configs and no weights)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tests.helpers import TINY_META_PARAMS, TINY_REFERENCE_CONFIG, cli_error
from weighted_mtp.assets.benchmark import FUNCTION_STOPS
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import run as run_module
from weighted_mtp.eval.generate import SamplingConfig, sample_seed
from weighted_mtp.eval.run import RunSettings, run_evaluation
from weighted_mtp.storage.layout import Layout


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": math.nan}, "--temperature must be a finite number >= 0, not nan"),
        ({"temperature": math.inf}, "--temperature must be a finite number >= 0, not inf"),
        ({"temperature": -1.0}, "--temperature must be a finite number >= 0, not -1.0"),
        ({"top_p": 0.0}, "--top-p must be in (0, 1], not 0.0"),
        ({"top_p": math.nan}, "--top-p must be in (0, 1], not nan"),
        ({"n": 0}, "-n/--samples must be at least 1, not 0"),
        ({"max_new_tokens": 0}, "--max-new-tokens must be at least 1, not 0"),
        ({"limit": 0}, "--limit must be at least 1, not 0"),
        ({"limit": -1}, "--limit must be at least 1, not -1"),
        ({"workers": 0}, "--workers must be at least 1, not 0"),
        ({"seed": -1}, "--seed must be at least 0, not -1"),
        ({"split": "bogus"}, "humaneval has no split 'bogus'"),
        ({"tests": "all"}, "humaneval has no challenge tests"),
        ({"speculative": True, "draft_heads": 0}, "--draft-heads must be at least 1, not 0"),
        ({"draft_heads": 1}, "--draft-heads needs --speculative"),
    ],
)
def test_a_bad_setting_is_one_usage_error(changes, message) -> None:
    sampling = {k: changes.pop(k) for k in SAMPLING if k in changes}
    with pytest.raises(UsageError) as caught:
        RunSettings(dataset="humaneval", sampling=SamplingConfig(**sampling), **changes)
    assert caught.value.line().startswith(message)


SAMPLING = ("temperature", "top_p", "max_new_tokens", "seed")


def test_good_settings_fill_in_the_dataset_facts() -> None:
    mbpp = RunSettings(
        dataset="mbpp", sampling=SamplingConfig(temperature=0.0), tests="all", split="validation"
    )
    assert (mbpp.split, mbpp.tests, mbpp.sampling.stop) == ("validation", "all", ())
    humaneval = RunSettings(dataset="humaneval", sampling=SamplingConfig(seed=3))
    assert humaneval.split == "test" and humaneval.sampling.stop == FUNCTION_STOPS
    first, second = (humaneval.task_sampling(t) for t in ("A", "B"))
    assert first.seed != second.seed and first.stop == FUNCTION_STOPS
    assert first == dataclasses.replace(humaneval.sampling, seed=sample_seed(3, "A"))
    # on another dataset the stop sequences are that dataset's, the rest the same
    moved = humaneval.for_dataset("mbpp")
    assert (moved.split, moved.sampling.stop, moved.sampling.seed) == ("test", (), 3)


def test_settings_are_built_by_keyword_and_recorded_flat() -> None:
    with pytest.raises(TypeError):
        RunSettings("humaneval")  # type: ignore[misc]
    settings = RunSettings(
        dataset="humaneval",
        sampling=SamplingConfig(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=2),
        n=4,
        workers=3,
    )
    assert dataclasses.asdict(settings.record()) == {
        "dataset": "humaneval",
        "n": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_new_tokens": 7,
        "speculative": False,
        "limit": None,
        "seed": 2,
        "split": "test",
        "workers": 3,
        "tests": "base",
        "draft_heads": None,
        "isolation": True,
    }


@pytest.fixture
def configs_only(tmp_path, monkeypatch) -> Layout:
    """micro-mtp with its params.json (a 512-token context) and nothing else; loading any
    model fails the test."""
    layout = Layout(tmp_path / "storage")
    params = layout.model("micro-mtp").params
    params.parent.mkdir(parents=True)
    params.write_text(json.dumps(TINY_META_PARAMS))

    def never(*_args: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(run_module, "load_for_generation", never)
    monkeypatch.setattr(run_module, "load_run_for_generation", never)
    return layout


@pytest.mark.parametrize("max_new_tokens", [511, 2200, 1_000_000_000])
def test_a_token_budget_that_leaves_no_room_for_a_prompt_is_refused(configs_only, max_new_tokens):
    settings = RunSettings(
        dataset="humaneval", sampling=SamplingConfig(max_new_tokens=max_new_tokens)
    )
    with pytest.raises(UsageError) as caught:
        run_evaluation(configs_only, "micro-mtp", settings, configs_only.root / "out")
    assert caught.value.line() == (
        f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in micro-mtp's "
        "512-token context; use at most 510 (prompts longer than what is left are cut)"
    )


def test_an_output_folder_that_is_a_file_or_not_empty_is_refused(configs_only, tmp_path):
    settings = RunSettings(dataset="humaneval", sampling=SamplingConfig(max_new_tokens=16))
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(UsageError, match="--out is not a folder"):
        run_evaluation(configs_only, "micro-mtp", settings, taken)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="output folder is not empty"):
        run_evaluation(configs_only, "micro-mtp", settings, tmp_path / "full")
    with pytest.raises(WmtpError, match="cannot write the evaluation's results in"):
        run_evaluation(configs_only, "micro-mtp", settings, taken / "below")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "gpu"], "--device 'gpu' is not one of auto, cpu, cuda or cuda:N"),
        (["--threads", "0"], "--threads must be at least 1, not 0"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0, not nan"),
        (["--split", "bogus"], "humaneval has no split 'bogus'; its splits: test"),
        (["--tests", "all"], "humaneval has no challenge tests"),
        (["--draft-heads", "1"], "--draft-heads needs --speculative"),
        (
            ["--speculative", "--draft-heads", "2", "--max-new-tokens", "16"],
            "--draft-heads must be between 1 and 1 for this model (2 prediction heads), not 2",
        ),
    ],
)
def test_the_command_stops_at_a_bad_value_before_loading(configs_only, args, message) -> None:
    error = cli_error("eval", "run", "micro-mtp", *args, root=configs_only.root)
    assert error.line().startswith(message) and error.exit_code == 2


def test_speculative_decoding_of_a_model_without_mtp_heads_is_refused_before_loading(
    configs_only,
) -> None:
    config = configs_only.model("micro-ref").hf_config
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(TINY_REFERENCE_CONFIG))
    args = ["micro-ref", "--speculative", "--max-new-tokens", "16"]
    error = cli_error("eval", "run", *args, root=configs_only.root)
    assert error.line().startswith(
        "--speculative needs a model with MTP heads; 'micro-ref' is a Hugging Face model"
    )
