"""`keeping_interrupts` over Python's own SIGINT handling; the tests that need it set it
(`sigint_default`), so they pass however the run was started."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import python_sigint

from weighted_mtp.interrupts import keeping_interrupts


def _sigint_swallowed() -> None:
    """What torch's initialisation does to a Ctrl-C: catch it and carry on."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        pass


@pytest.mark.usefixtures("sigint_default")
def test_a_swallowed_interrupt_is_raised_after_the_block():
    with pytest.raises(KeyboardInterrupt), keeping_interrupts():
        _sigint_swallowed()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("sigint_default")
def test_an_interrupt_that_propagates_is_raised_once():
    with pytest.raises(KeyboardInterrupt), keeping_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("sigint_default")
def test_without_an_interrupt_nothing_happens():
    with keeping_interrupts():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_someone_else_installed_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append(1))
    try:
        with keeping_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert seen == [1]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_sigint_stays_ignored():
    """A process started with SIGINT ignored (a background job) is not made interruptible."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with keeping_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _child_has_python_sigint() -> bool:
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


def test_python_sigint_reaches_processes_started_by_a_background_job():
    """A test run started with SIGINT ignored passes that on to its subprocesses, unless the
    test sets Python's handler (`helpers.python_sigint`), which exec resets to the default."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert not _child_has_python_sigint()
        with python_sigint():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert _child_has_python_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
