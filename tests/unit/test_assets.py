"""The asset registry is the one place that knows assets by name."""

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

import weighted_mtp
from weighted_mtp import assets
from weighted_mtp.errors import UsageError
from weighted_mtp.storage.layout import Layout

PACKAGE = Path(weighted_mtp.__file__).parent


def test_every_asset_is_declared_once_with_what_builds_and_checks_it():
    names = [spec.name for spec in assets.ASSETS]
    assert len(names) == len(set(names))
    for spec in assets.ASSETS:
        assert spec.build and spec.checks
        if spec.is_derived:
            assert assets.spec(spec.derived_from or "").kind == "model"
            assert assets.spec(spec.derived_from or "").format == spec.format
    assert assets.checked_by("micro") == (assets.MICRO_MTP, assets.MICRO_REF)
    with pytest.raises(UsageError, match="unknown asset"):
        assets.spec("nope")


def test_the_layout_takes_raw_folders_and_protected_paths_from_the_registry(tmp_path):
    layout = Layout(tmp_path)
    meta = assets.spec(assets.META_MODEL)
    assert layout.model(meta.name).raw_checkpoint_dir.name == meta.raw_checkpoint_dir
    assert layout.protected_paths() == [layout.model(meta.name).raw_checkpoint_dir]
    assert set(layout.sources()) == {s.name for s in assets.ASSETS if "download" in s.build}


def _asset_name_comparisons(tree: ast.AST) -> list[int]:
    names = {spec.name for spec in assets.ASSETS}
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Constant) and side.value in names
            for side in [node.left, *node.comparators]
        )
    ]


def _tables_keyed_by_asset_names(tree: ast.AST) -> list[int]:
    """Dict displays with an asset name as a literal key: facts about an asset kept outside
    the registry (`{"humaneval": ...}`), and dict(...) calls with one as a keyword."""
    names = {spec.name for spec in assets.ASSETS}
    return [
        node.lineno
        for node in ast.walk(tree)
        if (
            isinstance(node, ast.Dict)
            and any(isinstance(k, ast.Constant) and k.value in names for k in node.keys)
        )
        or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "dict"
            and any(k.arg in names for k in node.keywords)
        )
    ]


def _name_bound_lines(text: str) -> list[int]:
    tree = ast.parse(text)
    lines = _asset_name_comparisons(tree) + _tables_keyed_by_asset_names(tree)
    lines += [i + 1 for i, line in enumerate(text.splitlines()) if re.search(r"_step\d", line)]
    return sorted(lines)


def test_no_module_but_the_registry_compares_asset_names_keys_tables_by_them_or_numbers_steps():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        lines = _name_bound_lines(path.read_text())
        if lines and path.name != "assets.py":
            found[path.relative_to(PACKAGE).as_posix()] = lines
    assert found == {}


@pytest.mark.parametrize(
    "planted",
    [
        'x = name == "micro-mtp"',
        'STOPS = {"humaneval": ("\\ndef ",), "mbpp": ()}',
        "RAW = dict(mbpp='mbpp')",
        "def _step3(): pass",
    ],
)
def test_the_name_rule_fails_on_a_planted_name_bound_table(planted):
    assert _name_bound_lines(planted) == [1]


def test_format_keyed_tables_are_not_asset_names_and_cover_every_format():
    from weighted_mtp.data.converters import CONVERTERS, EVALUATION_PROMPTS
    from weighted_mtp.eval.tasks import FORMATS
    from weighted_mtp.pipeline.demo import MIRROR_WRITERS

    assert not set(assets.DATASET_FORMATS) & {spec.name for spec in assets.ASSETS}
    for table in (CONVERTERS, EVALUATION_PROMPTS, FORMATS, MIRROR_WRITERS):
        assert set(table) == set(assets.DATASET_FORMATS)
    for name in assets.DATASETS:
        assert assets.dataset_format(name) in assets.DATASET_FORMATS
    with pytest.raises(UsageError, match="unknown dataset 'micro-mtp'"):
        assets.dataset_format(assets.MICRO_MTP)


def test_run_kinds_say_where_they_live_what_completes_them_and_what_they_read(tmp_path):
    layout = Layout(tmp_path)
    known_inputs = {"model", "dataset"} | {k.name for k in assets.RUN_KINDS}
    for kind in assets.RUN_KINDS:
        assert kind.complete_when and set(kind.made_from) <= known_inputs
        assert layout.runs_of(kind.name) == layout.runs_dir / kind.name
        run = layout.run(kind.name, tmp_path / "one")
        assert not run.complete and run.missing() == [run.root / f for f in kind.complete_when]
    assert layout.eval_runs_dir == tmp_path / "runs" / "eval"
    baseline = layout.run("baseline", tmp_path / "one")
    baseline.root.mkdir()
    baseline.summary.write_text("{}")
    assert baseline.complete
    assert assets.TRAINING_RUNS == ("baseline", "critic", "verifiable", "ref-tune", "rho1")
    with pytest.raises(UsageError, match="unknown run kind"):
        layout.runs_of("nope")


def test_a_dataset_in_a_known_format_needs_only_its_asset_spec(tmp_path, monkeypatch):
    """A second HumanEval-format dataset, declared by one AssetSpec and nothing else: its
    rows become training tasks and evaluation problems named after it, with the format's
    stop sequences and the registry's evaluation split."""
    import gzip

    from weighted_mtp.data.converters import iter_tasks
    from weighted_mtp.eval.run import RunSettings
    from weighted_mtp.eval.tasks import load_problems
    from weighted_mtp.storage import layout as layout_module
    from weighted_mtp.synthetic.datasets import humaneval_source

    humaneval = assets.spec(assets.HUMANEVAL)
    mini = replace(humaneval, name="humaneval-mini")
    monkeypatch.setattr(assets, "ASSETS", (*assets.ASSETS, mini))
    monkeypatch.setattr(assets, "_BY_NAME", {**assets._BY_NAME, mini.name: mini})
    monkeypatch.setattr(assets, "DATASETS", (*assets.DATASETS, mini.name))
    monkeypatch.setattr(layout_module, "DATASETS", (*layout_module.DATASETS, mini.name))

    layout = Layout(tmp_path)
    raw = layout.dataset(mini.name).raw / f"{mini.raw_file}.jsonl"
    raw.parent.mkdir(parents=True)
    with gzip.open(humaneval_source(), "rt", encoding="utf-8") as rows:
        raw.write_text("".join(next(rows) for _ in range(3)), encoding="utf-8")

    problems = load_problems(layout, mini.name)
    assert list(problems) == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert {p.dataset for p in problems.values()} == {mini.name}
    tasks = list(iter_tasks(mini.name, raw.parent, seed=0))
    assert {t.metadata["source"] for t in tasks} == {mini.name} and len(tasks) == 3
    settings = RunSettings(dataset=mini.name)
    assert settings.split == "test" and settings.sampling.stop == assets.FUNCTION_STOPS
