"""Which names of an MBPP task's tests the judge binds itself, and which it takes from the
sample, decided from the task's reference solution."""

from __future__ import annotations

from weighted_mtp.assets.judged_names import judge_imports, names_taken_from_sample

REFERENCE = """
import math, numpy as np, os.path
import heapq as hq
from math import isclose as close, pi
from collections import *
from .local import helper
from itertools import combinations
def sum(a, b):
    return a + b
string, total = "abc", 0
combinations = 3
for queue in range(1):
    pass
"""
TESTS = """
assert close(sum(1, 2), 3.0)
assert math.floor(pi) == 3 and hq.nlargest(1, [1]) == [1]
assert np.sum([1]) == 1 and helper(1) and os.path.sep == "/"
assert string == "abc" and combinations == 3 and queue == 0
"""


def test_the_judge_imports_what_the_reference_imports_from_the_standard_library():
    assert judge_imports(REFERENCE, TESTS) == (
        "import math, os.path\nimport heapq as hq\nfrom math import isclose as close, pi\n"
    )


def test_names_the_reference_defines_stay_the_samples():
    assert names_taken_from_sample(REFERENCE, TESTS) == ("queue", "string", "sum")


def test_nothing_when_the_reference_or_the_tests_do_not_parse():
    assert judge_imports("def (", TESTS) == ""
    assert names_taken_from_sample(REFERENCE, "assert (") == ()


def test_the_benchmarks_and_the_judge_agree_on_what_a_module_name_is():
    """`assets.judged_names` (read by benchmark modules, at the base layer) and the judge
    (in the sandbox) each decide it; they must decide alike."""
    import sys

    from weighted_mtp.assets import judged_names
    from weighted_mtp.eval.sandbox import judge

    names = [*sorted(sys.stdlib_module_names), "numpy", "sum", "os.path", "", "Math"]
    assert [judged_names.is_module_name(n) for n in names] == [
        judge.is_module_name(n) for n in names
    ]
