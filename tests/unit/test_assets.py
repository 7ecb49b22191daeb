"""The asset registry is the one place that knows assets by name."""

import ast
import re
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
        if lines and path.relative_to(PACKAGE).as_posix() != "assets/__init__.py":
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


def test_the_registry_lists_each_benchmark_module_once_in_a_stable_order():
    from weighted_mtp.assets.benchmark import BASE_TESTS, Benchmark

    assert assets.DATASETS == ("codecontests", "mbpp", "mbppplus", "humaneval", "humanevalplus")
    assert [spec.benchmark for spec in assets.DATASET_SPECS] == list(assets.BENCHMARKS)
    for benchmark in assets.BENCHMARKS:
        assert isinstance(benchmark, Benchmark) and assets.benchmark(benchmark.name) is benchmark
        assert assets.spec(benchmark.name).is_dataset and benchmark.eval_split in benchmark.splits
        assert benchmark.test_choices[0] == BASE_TESTS
    with pytest.raises(UsageError, match="unknown dataset 'micro-mtp'"):
        assets.benchmark(assets.MICRO_MTP)
    with pytest.raises(UsageError, match="unknown model 'mbpp'"):
        assets.model("mbpp")


@pytest.fixture
def extra_benchmarks(tmp_path, monkeypatch):
    """A folder searched for benchmark modules after the package's own; the modules
    imported from it are forgotten afterwards."""
    import sys

    from weighted_mtp.assets import benchmarks

    folder = tmp_path / "more"
    folder.mkdir()
    monkeypatch.setattr(benchmarks, "__path__", [*benchmarks.__path__, str(folder)])
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_discovery_refuses_a_module_without_a_benchmark_in_one_line(extra_benchmarks):
    from weighted_mtp.assets.benchmarks import discover
    from weighted_mtp.errors import WmtpError

    (extra_benchmarks / "half_done.py").write_text("NAME = 'half'\n")
    with pytest.raises(WmtpError, match="does not define BENCHMARK") as caught:
        discover()
    assert "half_done.py" in caught.value.line() and "\n" not in caught.value.line()


def test_discovery_refuses_two_benchmarks_of_one_name(extra_benchmarks):
    from weighted_mtp.assets.benchmarks import discover
    from weighted_mtp.errors import WmtpError

    (extra_benchmarks / "second_mbpp.py").write_text(
        "from weighted_mtp.assets.benchmarks.mbpp import Mbpp\nBENCHMARK = Mbpp()\n"
    )
    with pytest.raises(
        WmtpError, match=r"a second benchmark named 'mbpp' \(the first is in mbpp\.py\)"
    ):
        discover()


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
