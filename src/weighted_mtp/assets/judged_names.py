"""Which names a function-style judge takes from a sample, and which imports it runs
itself, read from a benchmark's reference solution and tests (MBPP-style asserts).

The judge's namespace (`eval.sandbox.judge.JudgeNamespace`) gives the tests the judge's own
built-ins and standard-library modules; these say where a benchmark's program binds one of
those names that the tests mean to take from the sample instead (MBPP task 126 defines
`sum`), and which of the program's standard-library imports the tests rely on.
"""

from __future__ import annotations

import ast
import builtins
import sys


def is_module_name(name: str) -> bool:
    """A top-level module of the standard library (`math`, `sys`, `collections`), as the
    judge's `is_module_name` decides it."""
    return name in sys.stdlib_module_names


def _reference_and_test_names(reference: str, tests: str) -> tuple[ast.Module, set[str]] | None:
    """The reference solution's syntax tree and the names the tests use (None: either does
    not parse)."""
    try:
        program, test = ast.parse(reference), ast.parse(tests)
    except (SyntaxError, ValueError):
        return None
    return program, {node.id for node in ast.walk(test) if isinstance(node, ast.Name)}


def _defined_names(program: ast.Module) -> set[str]:
    """Names the program's module level binds other than by import: functions, classes
    and every assignment target (`a, b = ...`, `for x in ...`, `with ... as f`)."""
    defined: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)  # its body is its own scope
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in program.body:
        visit(statement)
    return defined


def names_taken_from_sample(reference: str, tests: str) -> tuple[str, ...]:
    """Top-level names the reference solution defines that the tests use and that are
    also built-ins or standard-library module names: the judge must take those from the
    sample (plain Python would, since program and tests share one namespace); every other
    built-in and module name stays the judge's own (`is_module_name`)."""
    parsed = _reference_and_test_names(reference, tests)
    if parsed is None:
        return ()
    program, used = parsed
    judges = {
        name
        for name in _defined_names(program) & used
        if hasattr(builtins, name) or is_module_name(name)
    }
    return tuple(sorted(judges))


def judge_imports(reference: str, tests: str) -> str:
    """The reference solution's top-level imports from the standard library of names the
    tests use without binding them (`from math import isclose`, `import heapq as hq`), as
    code for the judge to run before the tests: those names are then the judge's own
    objects, not whatever a sample bound to them. Plain Python would give the tests the
    program's import of the same module."""
    parsed = _reference_and_test_names(reference, tests)
    if parsed is None:
        return ""
    program, used = parsed
    wanted = used - _defined_names(program)
    lines = []
    for node in program.body:
        if isinstance(node, ast.Import):
            aliases = [
                a
                for a in node.names
                if is_module_name(a.name.partition(".")[0])
                and (a.asname or a.name.partition(".")[0]) in wanted
            ]
            if aliases:
                lines.append(ast.unparse(ast.Import(names=aliases)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            aliases = [a for a in node.names if a.name != "*" and (a.asname or a.name) in wanted]
            if aliases and is_module_name(node.module.partition(".")[0]):
                lines.append(ast.unparse(ast.ImportFrom(node.module, aliases, 0)))
    return "".join(line + "\n" for line in lines)
