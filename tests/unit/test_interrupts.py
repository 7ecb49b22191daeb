import os
import signal
import time

import pytest

from weighted_mtp.interrupts import keeping_interrupts


def _sigint_swallowed() -> None:
    """What torch's initialisation does to a Ctrl-C: catch it and carry on."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        pass


def test_a_swallowed_interrupt_is_raised_after_the_block():
    with pytest.raises(KeyboardInterrupt), keeping_interrupts():
        _sigint_swallowed()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_that_propagates_is_raised_once():
    with pytest.raises(KeyboardInterrupt), keeping_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


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
