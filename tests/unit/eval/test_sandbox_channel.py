"""The judge-sample channel: values cross as exact built-in types or handles, the judge
decides with its own `==`, and what a sample sends cannot be more than a value.

The sample's side runs in a thread here (the sandbox runs it in another process); the
programs are the tests' own."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import fractions
import json
import math
import socket
import struct
import sys
import threading
from typing import Any

import numpy as np
import pytest

from weighted_mtp.eval.sandbox.codec import (
    FRAME_LIMIT,
    ProtocolError,
    by_name,
    decode,
    encode,
    receive_frame,
)
from weighted_mtp.eval.sandbox.judge import (
    Channel,
    Handles,
    SampleObject,
    judge,
    judge_export,
    run_sample,
)


class Colour(enum.IntEnum):
    RED = 3


Point = collections.namedtuple("Point", "x y")


def no_handles(value: object) -> Any:
    raise TypeError(f"not plain: {value!r}")


def no_resolve(tag: str, payload: list[Any]) -> object:
    if tag == "named":
        return by_name(payload)
    raise ProtocolError(tag)


def across(value: object) -> Any:
    """`value` after a trip through JSON text, as the channel carries it from the tests
    to the sample."""
    return decode(json.loads(json.dumps(encode(value, judge_export))), no_resolve)


def same(a: object, b: object) -> bool:
    """Equal, of exactly the same type, all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, (list, tuple, collections.deque)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


PLAIN = [
    None,
    True,
    0,
    -(2**70),
    3**20000,  # beyond the 4300-digit decimal limit: crosses as hex
    1.5,
    -0.0,
    float("inf"),
    float("nan"),
    "",
    "text with \x00 and \ud800 and é",
    b"\x00\xff",
    bytearray(b"ab"),
    complex(1, -2),
    [1, [2, (3, 4)], ()],
    (1, "a", (None,)),
    {1, 2, (3, 4)},
    frozenset({"a"}),
    {(1, 2): [3], "k": {"nested": True}},
    collections.Counter("abca"),
    collections.OrderedDict([("b", 1), ("a", 2)]),
    collections.deque([1, 2], maxlen=5),
    fractions.Fraction(-3, 7),
    decimal.Decimal("1.10"),
    range(1, 10, 3),
    datetime.date(2024, 2, 29),
    datetime.datetime(2024, 2, 29, 13, 5, 1, 7),
    datetime.time(23, 59),
    datetime.timedelta(days=-1, seconds=5),
    int,
    [str, float, math.sqrt, collections.Counter],
    # flat containers of exact scalars cross without a call per item; these do not
    [0.5, "a", None, True, 7],
    (1, 3**20000),
    {1.5, "b", -(2**70)},
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_values_cross_as_the_same_value_of_the_same_type(value):
    assert same(across(value), value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Colour.RED, 3),
        (Point(1, 2), (1, 2)),
        (collections.defaultdict(list, {"a": [1]}), {"a": [1]}),
        (type("Text", (str,), {})("abc"), "abc"),
        (np.int64(7), 7),
        (np.float32(0.5), 0.5),
        (np.bool_(True), True),
        ([1, Colour.RED, type("Text", (str,), {})("x")], [1, 3, "x"]),
        ((0.5, np.float64(1.5)), (0.5, 1.5)),
    ],
    ids=[
        "IntEnum",
        "namedtuple",
        "defaultdict",
        "str-subclass",
        "np.int64",
        "np.float32",
        "np.bool_",
        "list-of-subclasses",
        "tuple-with-numpy",
    ],
)
def test_subclasses_and_numpy_scalars_cross_as_their_plain_value(value, expected):
    assert same(across(value), expected)


def test_classes_and_functions_of_the_standard_library_cross_as_themselves():
    """MBPP task 533 passes `int`, `str` and `float` to the function under test."""
    for value in (int, len, math.sqrt, collections.OrderedDict, json.dumps):
        assert across(value) is value
    assert encode(math.sqrt, judge_export) == ["named", "math", "sqrt"]
    assert encode([int, len], Handles().export) == [
        "list",
        [["named", "builtins", "int"], ["ref", 0]],
    ]
    channel = Channel(socket.socket())  # the judge takes classes by name, not functions
    assert channel.resolve("named", ["builtins", "int"]) is int
    for function in (["builtins", "eval"], ["os", "system"]):
        with pytest.raises(ProtocolError):
            channel.resolve("named", function)
    channel.sock.close()
    for forged in (
        ["named", "os", "system<"],
        ["named", "numpy", "array"],
        ["named", "math", "nope"],
    ):
        with pytest.raises(ProtocolError):
            decode(forged, no_resolve)


def test_anything_else_crosses_as_a_handle_only():
    handles = Handles()
    thing = object()
    assert encode([thing, thing], handles.export) == ["list", [["ref", 0], ["ref", 0]]]
    assert handles.decode(["ref", 0]) is thing
    assert encode(math, handles.export) == ["module", "math", 1]
    with pytest.raises(TypeError):
        encode(lambda: None, no_handles)


@pytest.mark.parametrize(
    "data",
    [
        [1, 2],  # an untagged list
        {"a": 1},  # a JSON object
        ["nope", []],
        ["set", [["list", []]]],  # an unhashable set element
        ["bytes", "not base64!"],
        ["int", "xyz"],
        ["dict", [[1]]],
        ["Fraction", 1, 0],
        ["ref", 0],  # a handle the other side never gave
        ["list", "abc"],
    ],
)
def test_malformed_values_are_protocol_errors(data):
    with pytest.raises(ProtocolError):
        Handles().decode(data)


def test_a_value_nested_too_deep_is_refused_both_ways():
    deep: list[Any] = []
    for _ in range(500):
        deep = [deep]
    with pytest.raises(ValueError):
        encode(deep, no_handles)
    data: Any = ["list", []]
    for _ in range(500):
        data = ["list", [data]]
    with pytest.raises(ProtocolError):
        decode(data, no_resolve)


def verdict(program: str, test: str, prelude: str = "", entry_points: tuple[str, ...] = ()):
    """Run `program` as the sample (in a thread) and `test` as its judge."""
    judge_end, sample_end = socket.socketpair()
    sample = threading.Thread(target=run_sample, args=(sample_end, program), daemon=True)
    sample.start()
    try:
        return judge(judge_end, prelude, test, list(entry_points))
    finally:
        judge_end.close()
        sample.join(10)
        sample_end.close()


def test_a_correct_function_passes_and_a_wrong_one_fails():
    assert verdict("def f(x):\n    return 2 * x\n", "assert f(3) == 6")["result"] == "passed"
    wrong = verdict("def f(x):\n    return x\n", "assert f(3) == 6, 'doubled'")
    assert (wrong["result"], wrong["reason"]) == ("failed", "AssertionError: doubled")


@pytest.mark.parametrize(
    "returned",
    [
        "type('Any', (), {'__eq__': lambda s, o: True, '__hash__': object.__hash__})()",
        "type('Any', (int,), {'__eq__': lambda s, o: True, '__hash__': int.__hash__})(0)",
        "type('Any', (list,), {'__eq__': lambda s, o: True})()",
    ],
    ids=["object", "int-subclass", "list-subclass"],
)
def test_a_rigged_eq_never_decides_a_comparison(returned):
    program = f"def f():\n    return {returned}\n"
    assert verdict(program, "assert f() == 5")["result"] == "failed"
    assert verdict(program, "assert f() == [1, 2]")["result"] == "failed"


def test_handles_are_equal_only_to_themselves():
    program = "def f():\n    return object()\ndef g(x):\n    return x\n"
    assert verdict(program, "assert f() == f()")["result"] == "failed"
    assert verdict(program, "x = f()\nassert g(x) is x")["result"] == "failed"  # a new handle
    assert verdict(program, "x = f()\nassert g(x) == x")["result"] == "failed"


def test_mbpp_style_programs_work_through_handles():
    """Classes the solution defines, objects built by the tests' setup code, generators,
    methods, module-level helpers and in-place changes to the tests' arguments."""
    program = """
import heapq
from math import sqrt
from collections import Counter
R = 3
class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b
    def span(self):
        return self.b - self.a
class Node:
    def __init__(self, data):
        self.data, self.left, self.right = data, None, None
def height(node):
    return 0 if node is None else 1 + max(height(node.left), height(node.right))
def chain(pairs, n):
    return sum(1 for p in pairs[:n] if p.a < R * 10)
def squares(n):
    for i in range(n):
        yield i * i
def smallest(items, k):
    return heapq.nsmallest(k, items)
def sort_in_place(items):
    items.sort()
def spans(pairs):
    return {p.span() for p in pairs}
"""
    test = """
root = Node(1)
root.left = Node(2)
root.left.left = Node(3)
assert height(root) == 3
assert root.left.data == 2
assert chain([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3
assert list(squares(4)) == [0, 1, 4, 9]
assert next(iter(squares(3))) == 0
assert smallest([5, 1, 4], 2) == [1, 4]
items = [3, 1, 2]
sort_in_place(items)
assert items == [1, 2, 3]
assert spans([Pair(1, 3), Pair(2, 4)]) == {2}
assert R == 3
assert Pair(1, 2).span() == 1
assert sqrt(16) == 4.0
assert Counter("aab") == {"a": 2, "b": 1}
assert math.isclose(Pair(0, 0.1 + 0.2).span(), 0.3)
"""
    outcome = verdict(program, "import math\n" + test)
    assert outcome == {"result": "passed", "reason": ""}


def test_only_named_entry_points_may_shadow_built_ins():
    """MBPP task 126 asks for a function named `sum`; a sample redefining `set` cannot make
    the tests' own `set(...) == set(...)` compare its values."""
    program = "def sum(a, b):\n    return 6\n"
    test = "assert sum(10, 15) == 6"
    assert verdict(program, test, entry_points=("sum",))["result"] == "passed"
    assert verdict(program, test)["result"] == "error"  # the built-in sum(10, 15)
    cheat = "def set(*args):\n    return 1\ndef common(a, b):\n    return (9,)\n"
    rigged = verdict(cheat, "assert set(common((3, 4), (4, 5))) == set((4,))")
    assert rigged["result"] == "failed"


def test_a_standard_library_module_of_the_sample_is_the_judges_own_import():
    """A module crosses as its name; the judge imports its own copy (so a sample that
    patched its `math` does not patch the tests'), unless it is not the standard
    library's, which stays a handle."""
    channel = Channel(socket.socket())
    assert channel.resolve("module", ["json", 4]) is sys.modules["json"]
    assert isinstance(channel.resolve("module", ["numpy", 4]), SampleObject)
    channel.sock.close()


def test_the_samples_exceptions_reach_the_tests():
    program = (
        "class Odd(Exception):\n    pass\n"
        "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    raise Odd('odd')\n"
    )
    caught = "try:\n    f(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\n"
    assert verdict(program, caught)["result"] == "passed"
    custom = verdict(program, "f(1)")
    assert (custom["result"], custom["reason"]) == ("error", "Odd: odd")


def test_only_iteration_may_raise_stop_iteration_in_the_tests():
    """A call that raised StopIteration would silently end a loop of the tests
    (`all(map(f, cases))` on no case is True)."""
    program = "def f(x):\n    raise StopIteration\n"
    outcome = verdict(program, "assert all(map(f, [1, 2]))")
    assert outcome["result"] == "error" and "StopIteration" in outcome["reason"]
    generator = "def g():\n    yield 1\n"
    assert verdict(generator, "assert list(g()) == [1]")["result"] == "passed"


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("import sys\nsys.exit(0)", "exited before the tests finished"),
        ("raise SystemExit", "exited before the tests finished"),
        ("raise ValueError('boom')", "ValueError: boom"),
        ("assert 1 == 2, 'own assert'", "AssertionError: own assert"),
    ],
)
def test_a_program_that_ends_early_is_not_a_pass(program, reason):
    outcome = verdict(program, "pass")
    assert outcome["result"] in ("failed", "error") and reason in outcome["reason"]


def test_a_value_over_the_frame_limit_is_the_samples_error():
    program = f"def f():\n    return 'x' * {FRAME_LIMIT + 1}\n"
    outcome = verdict(program, "assert f() == 'x'")
    assert outcome["result"] == "error" and "over" in outcome["reason"]


def test_a_huge_or_garbled_frame_is_refused_without_reading_it():
    a, b = socket.socketpair()
    a.sendall(struct.pack(">I", FRAME_LIMIT + 1))
    with pytest.raises(ProtocolError):
        receive_frame(b)
    a.sendall(struct.pack(">I", 3) + b"[1,")
    with pytest.raises(ProtocolError):
        receive_frame(b)
    a.close()
    b.close()


def test_the_prelude_gives_the_tests_the_prompts_own_helpers():
    """HumanEval/32 tests `find_zero` with the prompt's `poly`: a sample that redefines
    `poly` changes its own answers, not the tests' check."""
    prelude = "def poly(xs, x):\n    return sum(c * x**i for i, c in enumerate(xs))\n"
    honest = prelude + "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    cheat = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 123.0\n"
    test = "assert abs(poly([2, 4], find_zero([2, 4]))) < 1e-9"
    assert verdict(honest, test, prelude, ("find_zero",))["result"] == "passed"
    assert verdict(cheat, test, prelude, ("find_zero",))["result"] == "failed"
