"""How a sample's process ended becomes its verdict from what the sample cannot choose:
the zygote's word that it was confined, and its CPU time as the kernel measured it."""

from __future__ import annotations

import signal

from weighted_mtp.eval.sandbox.worker import Ended, cpu_limit, how_it_ended, program_result

TIMEOUT = 3.0


def killed(signum: int) -> int:
    return signum  # the wait status of a process killed by `signum`


def exited(code: int) -> int:
    return code << 8


def test_a_signal_is_the_cpu_limit_only_when_the_cpu_time_reached_it():
    limit = cpu_limit(TIMEOUT)
    for signum in (signal.SIGXCPU, signal.SIGKILL):
        assert how_it_ended(Ended(killed(signum), limit + 0.01, True), TIMEOUT) == (
            "timed out",
            f"CPU time limit ({limit} s)",
        )
        name = signal.Signals(signum).name
        assert how_it_ended(Ended(killed(signum), 0.02, True), TIMEOUT) == (
            "error",
            f"killed by {name}",
        )


def test_the_sandbox_failed_only_when_the_zygote_says_so():
    assert how_it_ended(Ended(exited(125), 0.0, True), TIMEOUT) == ("error", "exit status 125")
    for status in (exited(0), exited(1), exited(125), killed(signal.SIGKILL)):
        result, reason = how_it_ended(Ended(status, 0.0, False), TIMEOUT)
        assert (result, reason.split(":")[0]) == ("error", "sandbox failure")


def test_a_program_that_was_never_confined_has_no_output_of_its_own():
    end = Ended(exited(0), 0.0, False)
    answer = program_result(end, TIMEOUT, b"42\n", b"", 1 << 20)
    assert answer["result"] == "error" and answer["reason"].startswith("sandbox failure")
    fine = program_result(Ended(exited(0), 0.0, True), TIMEOUT, b"42\n", b"", 1 << 20)
    assert fine == {"result": "ran", "reason": "", "stdout": "42\n"}
