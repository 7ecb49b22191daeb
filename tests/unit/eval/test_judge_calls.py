"""The judge calls ahead in EvalPlus's loops of calls (`for i, (inp, exp) in
enumerate(zip(inputs, results))`): the verdict is the one the same tests give call by call,
the sample sees the inputs only, in order, and at most one batch of calls runs past a
failing one. The sample's side runs in a thread here (the sandbox runs it in another
process)."""

from __future__ import annotations

import socket
import threading

import pytest

from weighted_mtp.eval.sandbox.judge import (
    CALL_AHEAD,
    FIRST_BATCH,
    CompiledTests,
    calling_ahead,
    judge,
    run_sample,
)

ORACLE = """
def close(out, exp, atol):
    if out == exp:
        return
    if atol == 0 and isinstance(exp, float):
        atol = 1e-6
    assert atol != 0 and type(out) is type(exp) and abs(out - exp) <= atol, (out, exp)
"""


def verdict(program: str, test: str) -> dict[str, object]:
    judge_end, sample_end = socket.socketpair()
    sample = threading.Thread(target=run_sample, args=(sample_end, program), daemon=True)
    sample.start()
    try:
        return judge(judge_end, "", test, [])
    finally:
        judge_end.close()
        sample.join(10)
        sample_end.close()


def evalplus_tests(inputs: list[list[object]], results: list[object], *, ahead: bool) -> str:
    """HumanEval+'s shape (a `check(candidate)`); `ahead=False` is the same loop written
    so that the judge calls one at a time."""
    loop = (
        "for i, (inp, exp) in enumerate(zip(inputs, results)):"
        if ahead
        else "for inp, exp in zip(inputs, results):"
    )
    return (
        ORACLE
        + f"def check(candidate):\n    inputs = {inputs!r}\n    results = {results!r}\n"
        + f"    {loop}\n        close(candidate(*inp), exp, 0)\ncheck(f)\n"
    )


INPUTS = [[i, 0.5 * i] for i in range(40)]
RESULTS = [i + 0.5 * i for i in range(40)]
PROGRAMS = {
    "correct": "def f(a, b):\n    return a + b\n",
    "float error within atol": "def f(a, b):\n    return a + b + 1e-9\n",
    "wrong at 17": "def f(a, b):\n    return a + b + (a == 17)\n",
    "raises at 23": "def f(a, b):\n    if a == 23:\n        raise KeyError(a)\n    return a + b\n",
    "stop iteration at 3": (
        "def f(a, b):\n    if a == 3:\n        raise StopIteration\n    return a + b\n"
    ),
    "rigged eq": (
        "class Any(float):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = float.__hash__\n"
        "def f(a, b):\n    return Any(0)\n"
    ),
    "a handle": (
        "class Box:\n    def __repr__(self):\n        return 'Box'\n"
        "def f(a, b):\n    return Box()\n"
    ),
    "exits at 5": (
        "import sys\ndef f(a, b):\n    if a == 5:\n        sys.exit(0)\n    return a + b\n"
    ),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_calling_ahead_gives_the_verdict_of_calling_one_at_a_time(name):
    program = PROGRAMS[name]
    ahead = verdict(program, evalplus_tests(INPUTS, RESULTS, ahead=True))
    one_by_one = verdict(program, evalplus_tests(INPUTS, RESULTS, ahead=False))
    assert ahead == one_by_one
    assert (ahead["result"] == "passed") == name.startswith(("correct", "float"))


def test_the_loops_of_evalplus_call_ahead_and_other_code_stays_as_written():
    humaneval_plus = evalplus_tests([[1, 2]], [3], ahead=True)
    assert f"{CALL_AHEAD}(candidate, inputs, i)" in calling_ahead(humaneval_plus)
    mbpp_plus = "for i, inp in enumerate(inputs):\n    assertion(f(*inp), ref_func(*inp), 0)\n"
    rewritten = calling_ahead(mbpp_plus)
    assert f"{CALL_AHEAD}(f, inputs, i)" in rewritten
    assert f"{CALL_AHEAD}(ref_func, inputs, i)" in rewritten  # the judge's own: called as is
    unchanged = [
        evalplus_tests([[1, 2]], [3], ahead=False),
        "for i, inp in enumerate(inputs):\n    assert f(*inp, 1) == 2\n",
        "for i, inp in enumerate(inputs):\n    assert f(inp) == 2\n",
        "for i, (inp, exp) in enumerate(pairs):\n    assert f(*inp) == exp\n",
        "text = '''\nfor i, inp in enumerate(inputs):\n'''\n",
    ]
    for test in unchanged:
        assert calling_ahead(test) == test


def test_the_sample_sees_the_inputs_only_and_at_most_a_batch_past_a_failure():
    program = (
        "seen = []\n"
        "def f(a, b):\n    seen.append((a, b))\n    return a + b + (a == 9)\n"
        "def calls():\n    return list(seen)\n"
    )
    test = evalplus_tests(INPUTS, RESULTS, ahead=True).replace(
        "check(f)\n",
        "try:\n    check(f)\nexcept AssertionError:\n    pass\n"
        "got = calls()\n"
        f"assert got == [tuple(x) for x in {INPUTS!r}][: len(got)], got\n"
        f"assert 10 <= len(got) <= 10 + 2 * {FIRST_BATCH}, len(got)\n",
    )
    assert verdict(program, test) == {"result": "passed", "reason": ""}


def test_changes_to_arguments_are_written_back_call_by_call():
    program = "def f(items):\n    items.append(len(items))\n    return sum(items)\n"
    test = (
        "inputs = [[[1]], [[2, 3]], [[]]]\n"
        "for i, inp in enumerate(inputs):\n"
        "    total = f(*inp)\n"
        "    assert inp[0][-1] == len(inp[0]) - 1 and total == sum(inp[0]), (inp, total)\n"
    )
    assert verdict(program, test) == {"result": "passed", "reason": ""}


def test_results_larger_than_a_frame_come_in_several():
    program = "def f(n):\n    return 'x' * n\n"
    inputs = [[300_000 + i] for i in range(12)]  # about 3.6 MB of results in one batch
    test = (
        f"inputs = {inputs!r}\n"
        "for i, inp in enumerate(inputs):\n    assert f(*inp) == 'x' * inp[0]\n"
    )
    assert verdict(program, test) == {"result": "passed", "reason": ""}


def test_compiled_tests_are_kept_by_text_up_to_a_size():
    cache = CompiledTests(limit=100)
    small, other = "x = 1\n", "y = 2\n"
    assert cache.code(small) is cache.code(small)
    cache.code(other)
    big = "z = 0\n" + "#" * 200
    assert cache.code(big) is not cache.code(big)  # over the limit: never kept
    cache.code("w = '" + "w" * 90 + "'\n")  # pushes out the least recent
    assert list(cache.codes) == ["w = '" + "w" * 90 + "'\n"]
