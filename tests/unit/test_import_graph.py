"""The package's modules import each other one way: no cycles, and no import from a lower
layer into a higher one (`LAYERS`). Function-local imports count: they only defer a cycle or
an upward dependency to run time."""

import ast
from pathlib import Path

import pytest

import weighted_mtp

PACKAGE = Path(weighted_mtp.__file__).parent


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(
    tree: ast.Module, module: str, is_package: bool, known: set[str], *, type_only_too: bool
) -> set[str]:
    """The package modules `module` imports anywhere in its body; those under
    `if TYPE_CHECKING:` only with `type_only_too` (they are no run-time cycle, but they are a
    dependency between layers)."""
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if not type_only_too
        and isinstance(node, ast.If)
        and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not name.startswith(module + "."):
                found.add(name)
    return found


def import_graph(package: Path = PACKAGE, *, type_only_too: bool = False) -> dict[str, set[str]]:
    """Module name -> the package modules it imports, for every module under `package`."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    known = set(files)
    return {
        module: _imported(
            ast.parse(path.read_text()),
            module,
            path.name == "__init__.py",
            known,
            type_only_too=type_only_too,
        )
        for module, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "weighted_mtp.pipeline.build" in graph["weighted_mtp.pipeline.demo"]  # it sees edges
    assert cycles(graph) == []


# The layers, top to bottom, by the first name under `weighted_mtp`: a module may import its
# own layer and any layer below it, never one above. The base modules are one layer of
# peers (the cycle test keeps their imports of each other one way); `__init__` is the
# package itself. A new top-level module or package fails the test until it is placed here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("pipeline",),
    ("synthetic",),
    ("train",),
    ("eval",),
    ("data",),
    ("models",),
    ("catalog",),
    ("storage",),
    ("limits", "assets", "interrupts", "progress", "errors", "checks", "clock", "figures"),
    ("__init__",),
)


def layer_of(module: str) -> str:
    """`weighted_mtp.eval.run` -> `eval`; the package itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(
    graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS
) -> list[tuple[str, str]]:
    """Every (importer, imported) edge that runs from a lower layer to a higher one. A
    module in no layer is an error (it must be placed, not skipped)."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    unplaced = sorted({layer_of(m) for m in graph} - rank.keys())
    assert not unplaced, f"place these in LAYERS: {unplaced}"
    return sorted(
        (module, dep)
        for module, deps in graph.items()
        for dep in deps
        if rank[layer_of(dep)] < rank[layer_of(module)]
    )


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "weighted_mtp"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_checker_finds_a_planted_upward_import(tmp_path):
    """A function-local absolute import, a relative one and a type-only one from storage
    up into models are all found; the downward import is not."""
    package = _write_package(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/convert.py": "from weighted_mtp.storage import layout\n",
            "storage/__init__.py": "",
            "storage/layout.py": "def f():\n    from weighted_mtp.models import convert\n",
            "storage/atomic.py": "def g():\n    from ..models.convert import x\n",
            "storage/lock.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import weighted_mtp.models.convert\n"
            ),
        },
    )
    found = upward_imports(import_graph(package, type_only_too=True))
    assert found == [
        ("weighted_mtp.storage.atomic", "weighted_mtp.models.convert"),
        ("weighted_mtp.storage.layout", "weighted_mtp.models"),
        ("weighted_mtp.storage.layout", "weighted_mtp.models.convert"),
        ("weighted_mtp.storage.lock", "weighted_mtp.models.convert"),
    ]


def test_the_checker_refuses_a_module_in_no_layer(tmp_path):
    package = _write_package(tmp_path, {"newthing.py": "import weighted_mtp.errors\n"})
    with pytest.raises(AssertionError, match="newthing"):
        upward_imports(import_graph(package))


def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph(type_only_too=True)
    assert "weighted_mtp.storage.init" in graph["weighted_mtp.cli.storage"]  # function-local
    found = upward_imports(graph)
    assert found == [], "upward imports: " + ", ".join(f"{a} -> {b}" for a, b in found)


def test_no_module_name_is_used_in_two_packages():
    """One name per concept: `train/checkpoint.py` and `models/checkpoint.py` would be two
    things called the same (`__init__` and `__main__` excepted)."""
    packages_of: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            packages_of.setdefault(path.stem, []).append(str(path.parent.relative_to(PACKAGE)))
    assert {name: where for name, where in packages_of.items() if len(where) > 1} == {}
