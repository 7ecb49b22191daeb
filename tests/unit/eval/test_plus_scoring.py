"""Base and plus side by side, as EvalPlus scores them: a sample passes plus when it passes
the base tests and the plus tests; the plus tests run only on samples that passed the base
tests; pass@k of both is checked against a brute-force count over all k-subsets."""

from __future__ import annotations

import itertools
import random

import pytest

from weighted_mtp.assets.benchmark import BASE_TESTS, PLUS_TESTS, FunctionTests, Problem
from weighted_mtp.eval.problems import SplitProblems
from weighted_mtp.eval.sandbox.pool import Job, Outcome
from weighted_mtp.eval.scoring import Sample, pass_at_ks, per_task, plus_outcomes


def enumerated(verdicts: list[bool], k: int) -> float:
    """Fraction of all k-subsets of a task's samples holding a passing one."""
    subsets = list(itertools.combinations(verdicts, k))
    return sum(any(s) for s in subsets) / len(subsets)


PLUS = FunctionTests("assert all(f() == 1 for _ in range(3))\n", ("f",), time_limit=9.0)


def split(problems: dict[str, Problem]) -> SplitProblems:
    return SplitProblems("bench", "test", BASE_TESTS, (), tuple(problems), problems, {}, {})


def problem(task_id: str, plus: bool) -> Problem:
    tests = {BASE_TESTS: FunctionTests("assert f() == 1\n", ("f",))}
    return Problem("bench", task_id, "", tests | ({PLUS_TESTS: PLUS} if plus else {}))


def test_plus_runs_only_where_the_base_passed_and_keeps_the_base_verdict_elsewhere():
    problems = {"t/0": problem("t/0", True), "t/1": problem("t/1", False)}
    samples = [
        Sample(1, "t/0", "def f(): return 1", {}),
        Sample(2, "t/0", "def f(): return 2", {}),
        Sample(3, "t/1", "def f(): return 1", {}),
        Sample(4, "t/0", "def f(): raise KeyError", {}),
    ]
    base = [Outcome("passed"), Outcome("failed", "AssertionError"), Outcome("passed")]
    base.append(Outcome("error", "KeyError"))
    ran: list[Job] = []

    def run(jobs, total):
        got = list(jobs)
        assert len(got) == total
        ran.extend(got)
        return [Outcome("failed", "plus") for _ in got]

    plus = plus_outcomes([s.task_id for s in samples], samples, split(problems), base, run)
    assert [job.program for job in ran] == ["def f(): return 1"]  # sample 1 only
    assert ran[0].test == PLUS.program and ran[0].timeout == 9.0
    assert plus == [Outcome("failed", "plus"), base[1], base[2], base[3]]
    assert plus_outcomes([], [], split({"t/1": problems["t/1"]}), [], run) is None


@pytest.mark.parametrize("seed", range(5))
def test_pass_at_k_of_base_and_plus_match_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 6)
    task_ids, base, plus = [], [], []
    for task in range(rng.randint(1, 5)):
        for _ in range(n):
            passed = rng.random() < 0.6
            task_ids.append(f"t/{task}")
            base.append(Outcome("passed" if passed else "failed"))
            plus.append(Outcome("passed" if passed and rng.random() < 0.5 else "failed"))
    tasks = per_task(task_ids, base, plus)
    ks = tuple(range(1, n + 1))
    for which, outcomes in (("base", base), ("plus", plus)):
        got = pass_at_ks(tasks, ks, plus=which == "plus")
        for k in ks:
            per = [
                enumerated(
                    [o.passed for t, o in zip(task_ids, outcomes, strict=True) if t == task], k
                )
                for task in dict.fromkeys(task_ids)
            ]
            assert got[f"pass@{k}"] == pytest.approx(sum(per) / len(per), abs=1e-12)
    assert all(t.plus_passed is not None and t.plus_passed <= t.passed for t in tasks.values())
    assert all(t.plus_passed is None for t in per_task(task_ids, base).values())
