"""The comparison from verdicts to numbers and files: which run is the Baseline, the sign of
a difference, each k, McNemar's direction, recomputed here with scipy from the same
verdicts; an evaluation whose per-sample results disagree with its results.json is refused;
comparison.json is the same bytes for the same verdicts."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.helpers import TINY_META_PARAMS, TINY_REFERENCE_CONFIG
from tests.schemas import assert_matches_schema
from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval.compare import (
    ComparedRun,
    CompareSettings,
    Comparison,
    Evaluation,
    compare_dataset,
    compare_runs,
    comparison_markdown,
    read_verdicts,
    write_comparison,
)
from weighted_mtp.eval.generate import SamplingConfig
from weighted_mtp.eval.run import RunSettings
from weighted_mtp.eval.scoring import results_path
from weighted_mtp.storage.layout import ComparisonFolder, Layout

LABELS = ["baseline", "verifiable", "rho1"]


def evaluation(verdicts: dict[str, list[bool]], folder: str = "x") -> Evaluation:
    return Evaluation(Path("/evals") / folder, "s" * 64, "v" * 64, verdicts, reused=False)


def sampled_verdicts(rates: list[float], n: int, tasks: int, seed: int) -> list[Evaluation]:
    """Verdicts of models sharing task difficulty (per-model pass rates shift it), tasks
    listed in a different order by each evaluation."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(tasks)
    evaluations = []
    for i, rate in enumerate(rates):
        p = np.clip(difficulty + rate, 0, 1)
        order = rng.permutation(tasks) if i else np.arange(tasks)
        evaluations.append(
            evaluation({f"T/{t}": [bool(x) for x in rng.random(n) < p[t]] for t in order}, str(i))
        )
    return evaluations


def settings(n: int, ks: tuple[int, ...], resamples: int = 20_000) -> CompareSettings:
    return CompareSettings(
        ("humaneval",),
        ks,
        RunSettings(dataset="humaneval", n=n, sampling=SamplingConfig(temperature=0.8)),
        resamples,
    )


def unbiased(n: int, c: int, k: int) -> float:
    return 1 - comb(n - c, k) / comb(n, k)


def test_each_run_against_the_baseline_on_every_k_matches_scipy() -> None:
    evaluations = sampled_verdicts([-0.2, 0.0, 0.15], n=5, tasks=60, seed=1)
    result = compare_dataset("humaneval", evaluations, settings(5, (1, 3)), "test")
    tasks = list(evaluations[0].verdicts)
    assert result.tasks == tasks
    for k in (1, 3):
        per_task = [
            np.array([unbiased(5, sum(e.verdicts[t]), k) for t in tasks]) for e in evaluations
        ]
        for interval, values in zip(result.pass_at_k[k], per_task, strict=True):
            reference = stats.bootstrap(
                (values,), np.mean, method="percentile", n_resamples=20_000,
                rng=np.random.default_rng(0),
            )  # fmt: skip
            assert interval.estimate == pytest.approx(values.mean(), abs=1e-12)
            tolerance = 0.1 * reference.standard_error
            assert interval.low == pytest.approx(reference.confidence_interval.low, abs=tolerance)
            assert interval.high == pytest.approx(reference.confidence_interval.high, abs=tolerance)
        for interval, values in zip(result.differences[k], per_task[1:], strict=True):
            reference = stats.bootstrap(
                (per_task[0], values),
                lambda a, b, axis: np.mean(b - a, axis=axis),
                paired=True, method="percentile", n_resamples=20_000,
                rng=np.random.default_rng(0),
            )  # fmt: skip
            # other minus Baseline: the run that passes more is ahead
            assert interval.estimate == pytest.approx(values.mean() - per_task[0].mean())
            tolerance = 0.1 * reference.standard_error
            assert interval.low == pytest.approx(reference.confidence_interval.low, abs=tolerance)
            assert interval.high == pytest.approx(reference.confidence_interval.high, abs=tolerance)
    assert result.differences[1][1].excludes_zero  # 0.35 of pass rate apart on 60 tasks
    assert result.mcnemar is None  # five samples per task: no single paired verdict


def test_one_sample_per_task_adds_mcnemar_in_the_baselines_direction() -> None:
    evaluations = sampled_verdicts([0.0, 0.25, -0.3], n=1, tasks=80, seed=2)
    result = compare_dataset("humaneval", evaluations, settings(1, (1,), 2000), "test")
    assert result.mcnemar is not None
    tasks = result.tasks
    base = [evaluations[0].verdicts[t][0] for t in tasks]
    for test, other in zip(result.mcnemar, evaluations[1:], strict=True):
        mine = [other.verdicts[t][0] for t in tasks]
        b = sum(x and not y for x, y in zip(base, mine, strict=True))
        c = sum(y and not x for x, y in zip(base, mine, strict=True))
        assert (test.baseline_only, test.other_only) == (b, c)
        assert test.p_value == pytest.approx(stats.binomtest(b, b + c).pvalue, rel=1e-12)
    assert result.mcnemar[0].other_only > result.mcnemar[0].baseline_only
    assert result.mcnemar[1].baseline_only > result.mcnemar[1].other_only


def test_evaluations_of_different_tasks_are_refused() -> None:
    evaluations = sampled_verdicts([0.0, 0.1], n=1, tasks=5, seed=3)
    shorter = evaluation(dict(list(evaluations[1].verdicts.items())[:4]), "short")
    with pytest.raises(WmtpError, match="hold different tasks"):
        compare_dataset("humaneval", [evaluations[0], shorter], settings(1, (1,), 2000), "test")


def write_evaluation(folder: Path, rows: list[tuple[str, bool]], results: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text("")
    lines = [json.dumps({"task_id": t, "sample_id": 0, "passed": p}) for t, p in rows]
    results_path(folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "results.json").write_text(json.dumps(results))


def test_verdicts_must_agree_with_what_results_json_recorded(tmp_path: Path) -> None:
    rows = [("T/0", True), ("T/0", False), ("T/1", False), ("T/1", False)]
    recorded = {"n_tasks": 2, "pass_at_k": {"pass@1": 0.25}}
    write_evaluation(tmp_path / "good", rows, recorded)
    assert read_verdicts(tmp_path / "good", 2, {"pass@1": 0.25}, 2) == {
        "T/0": [True, False],
        "T/1": [False, False],
    }
    flipped = [("T/0", True), ("T/0", False), ("T/1", True), ("T/1", False)]
    write_evaluation(tmp_path / "edited", flipped, recorded)
    with pytest.raises(WmtpError, match=r"do not match results\.json"):
        read_verdicts(tmp_path / "edited", 2, {"pass@1": 0.25}, 2)
    with pytest.raises(WmtpError, match=r"do not match results\.json"):
        read_verdicts(tmp_path / "good", 2, {"pass@1": 0.25}, 3)  # not the samples per task
    write_evaluation(tmp_path / "bad", [("T/0", "yes")], recorded)  # type: ignore[list-item]
    with pytest.raises(WmtpError, match="line 1: no task_id string and passed verdict"):
        read_verdicts(tmp_path / "bad", 2, {"pass@1": 0.25}, 1)


def test_the_same_verdicts_give_the_same_comparison_files(tmp_path: Path) -> None:
    evaluations = sampled_verdicts([0.0, 0.1, -0.1], n=1, tasks=30, seed=4)
    chosen = settings(1, (1,), 2000)
    runs = [ComparedRun(f"runs/{label}", label) for label in LABELS]
    weights = [{"weights_sha256": str(i) * 64} for i in range(3)]
    written = []
    for name in ("a", "b"):
        folder = ComparisonFolder(tmp_path / name)
        result = compare_dataset("humaneval", evaluations, chosen, "test")
        write_comparison(Comparison(runs, weights, chosen, [result], folder))
        written.append(folder)
    first, second = (f.json.read_bytes() for f in written)
    assert first == second
    assert_matches_schema(written[0].json, "comparison.schema.json")
    data = json.loads(first)
    assert data["baseline"] == "baseline" and data["runs"][2]["label"] == "rho1"
    versus = data["datasets"]["humaneval"]["versus_baseline"]
    assert list(versus) == ["verifiable", "rho1"] and versus["rho1"]["mcnemar"] is not None
    markdown = written[0].markdown.read_text()
    assert "Baseline: baseline." in markdown and "| rho1 |" in markdown
    assert written[0].figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("speculative", "draft_heads", "said"),
    [
        (False, None, "plain decoding"),
        (True, None, "self-speculative decoding"),
        (True, 2, "self-speculative (2 drafts per pass) decoding"),
    ],
)
def test_the_markdown_names_the_decoding(speculative, draft_heads, said) -> None:
    generation = RunSettings(
        dataset="humaneval",
        n=1,
        speculative=speculative,
        draft_heads=draft_heads,
        sampling=SamplingConfig(temperature=0.0),
    )
    chosen = CompareSettings(("humaneval",), (1,), generation, 200)
    evaluations = sampled_verdicts([0.0, 0.1], n=1, tasks=10, seed=1)
    runs = [ComparedRun(f"runs/{label}", label) for label in LABELS[:2]]
    weights = [{"weights_sha256": str(i) * 64} for i in range(2)]
    result = compare_dataset("humaneval", evaluations, chosen, "test")
    comparison = Comparison(runs, weights, chosen, [result], ComparisonFolder(Path("/cmp")))
    assert said in " ".join(comparison_markdown(comparison).split())


@pytest.mark.parametrize("isolation", [True, False])
def test_an_unconfined_comparison_says_so_on_its_first_line(isolation) -> None:
    generation = RunSettings(
        dataset="humaneval", n=1, sampling=SamplingConfig(temperature=0.0), isolation=isolation
    )
    chosen = CompareSettings(("humaneval",), (1,), generation, 200)
    evaluations = sampled_verdicts([0.0, 0.1], n=1, tasks=10, seed=1)
    runs = [ComparedRun(f"runs/{label}", label) for label in LABELS[:2]]
    weights = [{"weights_sha256": str(i) * 64} for i in range(2)]
    result = compare_dataset("humaneval", evaluations, chosen, "test")
    comparison = Comparison(runs, weights, chosen, [result], ComparisonFolder(Path("/cmp")))
    first = comparison_markdown(comparison).splitlines()[0]
    assert first.startswith("**UNCONFINED: the samples ran") != isolation, first


@pytest.mark.parametrize(
    ("names", "draft_heads", "message"),
    [
        (["micro-mtp", "micro-ref"], None, "'micro-ref' is a Hugging Face model"),
        (["micro-mtp", "micro-mtp"], 2, "--draft-heads must be between 1 and 1 for this model"),
    ],
)
def test_speculative_decoding_is_checked_on_every_run_before_any_evaluation(
    tmp_path: Path, names, draft_heads, message
) -> None:
    """The storage holds the models' configs only (no weights, no datasets): the refusal
    comes from the configs, before anything is evaluated or read."""
    layout = Layout(tmp_path / "storage")
    for config, content in (
        (layout.model("micro-mtp").params, TINY_META_PARAMS),
        (layout.model("micro-ref").hf_config, TINY_REFERENCE_CONFIG),
    ):
        config.parent.mkdir(parents=True)
        config.write_text(json.dumps(content))
    generation = RunSettings(
        dataset="humaneval",
        n=1,
        sampling=SamplingConfig(temperature=0.0),
        speculative=True,
        draft_heads=draft_heads,
    )
    chosen = CompareSettings(("humaneval",), (1,), generation, 1000)
    runs = [ComparedRun(name, str(i)) for i, name in enumerate(names)]
    with pytest.raises(UsageError, match=message):
        compare_runs(layout, runs, chosen, ComparisonFolder(tmp_path / "out"))
