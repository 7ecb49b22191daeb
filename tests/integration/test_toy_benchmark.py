"""Acceptance: adding a benchmark is one new module and one catalog row.

A copy of the package gets `assets/benchmarks/toy.py` (written here, nothing else of the
copy is edited) and the CLI runs from that copy with a catalog that has the toy's row: the
demo's mirror writer writes the toy's synthetic upstream file, `wmtp build` downloads and
prepares it, `wmtp eval run` generates for its problems with the micro model and scores
them, and `wmtp eval score` gives the canonical solutions `passed` and wrong ones `failed`
through the sandbox. Any table keyed by dataset that still needs an entry fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import weighted_mtp
from tests.helpers import TINY_META_PARAMS

TOY_MODULE = textwrap.dedent(
    '''
    """A toy function-style benchmark: complete a one-line arithmetic function."""

    from __future__ import annotations

    import json
    from pathlib import Path
    from typing import Any

    from weighted_mtp.assets.benchmark import (
        BASE_TESTS,
        FUNCTION_STOPS,
        Benchmark,
        FunctionTests,
        OpenBinary,
        Problem,
        Task,
        TaskContext,
        TestChoice,
    )
    from weighted_mtp.assets.prompt_template import PromptParts
    from weighted_mtp.assets.rows import field, non_empty_text

    ROWS = [
        {
            "name": f"toy/{n}",
            "signature": f"def times_{n}(x):\\n    \\"\\"\\"x times {n}\\"\\"\\"\\n",
            "body": f"    return {n} * x\\n",
            "asserts": [f"assert times_{n}({a}) == {n * a}" for a in (1, 2, 5)],
        }
        for n in (2, 3, 7)
    ]


    class Toy(Benchmark):
        name = "toy"
        raw_file = "toy"
        stop_sequences = FUNCTION_STOPS

        def _parts(self, row: dict[str, Any], path: Path, line: int) -> PromptParts:
            signature = non_empty_text(field(row, "signature", path, line), "signature")
            return PromptParts("Complete the function.", signature, "Judged by asserts.")

        def training_tasks(
            self, row: dict[str, Any], path: Path, line: int, context: TaskContext
        ) -> list[Task]:
            name = non_empty_text(field(row, "name", path, line), "name")
            task = Task.of(
                "test",
                name,
                self._parts(row, path, line),
                {"source": self.name, "has_tests": True, "language": "python3"},
            )
            return [task.add_samples([(f"{name}#c0", field(row, "body", path, line), True)])]

        def prompt(
            self, row: dict[str, Any], path: Path, line: int, tests: TestChoice
        ) -> PromptParts:
            return self._parts(row, path, line)

        def problem(self, row: dict[str, Any], path: Path, line: int) -> Problem:
            signature = field(row, "signature", path, line)
            entry_point = signature.split()[1].split("(")[0]
            program = "\\n".join(field(row, "asserts", path, line)) + "\\n"
            return Problem(
                self.name,
                field(row, "name", path, line),
                signature,
                {BASE_TESTS: FunctionTests(program, (entry_point,))},
            )

        def write_mirror(self, out_dir: Path, open_binary: OpenBinary) -> Path:
            with open_binary(out_dir / "data" / "toy.jsonl") as handle:
                handle.write("".join(json.dumps(row) + "\\n" for row in ROWS).encode())
            return out_dir


    BENCHMARK = Toy()
    '''
)


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory, sp_model_path):
    """A storage with a tiny micro-mtp, a copy of the package with the toy module, and a
    catalog with the toy's row."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.models.micro import MicroSize, build_micro
    from weighted_mtp.models.upstream_download import download_model
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout
    from weighted_mtp.synthetic.model_mirrors import write_meta_mirror

    base = tmp_path_factory.mktemp("toy")
    layout = Layout(base / "storage")
    init_storage(layout)
    meta = write_meta_mirror(
        base / "meta", tokenizer_model=sp_model_path, params=dict(TINY_META_PARAMS)
    )
    download_model(layout, load_catalog(), "meta-llama-mtp", mirror=meta)
    size = MicroSize(dim=64, n_layers=2, n_heads=2, vocab_size=8000, n_future_tokens=2)
    build_micro(layout, "micro-mtp", init="random", seed=1, size=size)

    package = Path(weighted_mtp.__file__).parent
    source = base / "src"
    shutil.copytree(package, source / "weighted_mtp", ignore=shutil.ignore_patterns("__pycache__"))
    (source / "weighted_mtp" / "assets" / "benchmarks" / "toy.py").write_text(TOY_MODULE)
    catalog = yaml.safe_load((package / "catalog.yaml").read_text())
    catalog["datasets"]["toy"] = {
        "repo": "example/toy",
        "repo_type": "dataset",
        "revision": "main",
        "files": [{"path": "data/toy.jsonl", "into": ".cache"}],
    }
    catalog_path = base / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog))
    return layout, source, catalog_path


def wmtp(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m weighted_mtp ARGS` with the package copy first on the path."""
    return subprocess.run(
        [sys.executable, "-m", "weighted_mtp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def test_a_toy_benchmark_module_builds_and_evaluates_with_no_other_edit(toy_setup, tmp_path):
    layout, source, catalog = toy_setup
    root = ["--root", str(layout.root), "--catalog", str(catalog)]
    mirror = tmp_path / "mirror"
    written = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, weighted_mtp.pipeline.demo as demo; "
            "assert demo.__file__.startswith(sys.argv[2]); "
            "demo.write_dataset_mirrors(__import__('pathlib').Path(sys.argv[1]))",
            str(mirror),
            str(source),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(source)},
    )
    assert written.returncode == 0, written.stderr
    assert (mirror / "toy" / "data" / "toy.jsonl").is_file()

    steps = ["--only", "download-toy", "--only", "prepare-toy", "--only", "small-toy"]
    built = wmtp(source, *root, "build", "--mirror", str(mirror), *steps, "--json")
    assert built.returncode == 0, built.stdout + built.stderr
    toy = layout.datasets_dir / "toy"  # this process's registry has no toy
    raw = toy / "raw" / "toy.jsonl"
    assert [json.loads(line)["name"] for line in raw.read_text().splitlines()] == [
        "toy/2",
        "toy/3",
        "toy/7",
    ]
    assert any((toy / "processed").glob("*.jsonl"))

    out = tmp_path / "run"
    ran = wmtp(
        source, *root, "eval", "run", "micro-mtp", "--dataset", "toy", "-n", "1",
        "--temperature", "0", "--max-new-tokens", "8", "--threads", "1",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"] == "toy" and results["n_tasks_in_split"] == 3
    assert sum(results["results"].values()) == 3 and set(results["tasks"]) == {
        "toy/2",
        "toy/3",
        "toy/7",
    }
    verdicts = [
        json.loads(line) for line in (out / "samples.jsonl_results.jsonl").read_text().splitlines()
    ]
    assert sorted(v["task_id"] for v in verdicts) == ["toy/2", "toy/3", "toy/7"]
    assert all(v["result"] in ("passed", "failed", "error") for v in verdicts)

    samples = tmp_path / "canonical" / "samples.jsonl"
    samples.parent.mkdir()
    rows = [
        {"task_id": "toy/2", "completion": "    return 2 * x\n"},
        {"task_id": "toy/3", "completion": "    return 3 * x\n"},
        {"task_id": "toy/7", "completion": "    return 6 * x\n"},
    ]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored = wmtp(
        source, *root, "eval", "score", "--dataset", "toy", "--samples", str(samples), "--k", "1"
    )
    assert scored.returncode == 0, scored.stdout + scored.stderr
    by_task = {
        json.loads(line)["task_id"]: json.loads(line)["result"]
        for line in (samples.parent / "samples.jsonl_results.jsonl").read_text().splitlines()
    }
    assert by_task == {"toy/2": "passed", "toy/3": "passed", "toy/7": "failed"}


def test_without_the_toy_module_the_toy_is_an_unknown_dataset(toy_setup, tmp_path):
    """The same command from the installed package (no toy module) refuses the dataset:
    the module is what adds it."""
    layout, _source, _catalog = toy_setup
    refused = subprocess.run(
        [sys.executable, "-m", "weighted_mtp", "--root", str(layout.root), "eval", "score",
         "--dataset", "toy", "--samples", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "toy" in refused.stderr and "Traceback" not in refused.stderr
