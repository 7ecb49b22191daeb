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


def test_no_module_but_the_registry_compares_asset_names_or_numbers_plan_steps():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = _asset_name_comparisons(ast.parse(text))
        lines += [i + 1 for i, line in enumerate(text.splitlines()) if re.search(r"_step\d", line)]
        if lines and path.name != "assets.py":
            found[path.relative_to(PACKAGE).as_posix()] = lines
    assert found == {}
    assert _asset_name_comparisons(ast.parse('x = name == "micro-mtp"')) == [1]  # it can fail
