"""ExitWatch: a service's main process held by a pidfd wakes the services pass the moment it exits."""

from __future__ import annotations

import subprocess
import threading

import pytest

from nodeos.services.exits import ExitWatch


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_an_exit_wakes_at_once_and_a_living_or_forgotten_process_does_not(sleeper):
    woken = threading.Event()
    watch = ExitWatch(woken.set)
    try:
        watch.watch("svc", sleeper.pid)
        watch.watch("svc", sleeper.pid)  # every pass says it again: nothing changes
        assert not woken.wait(0.3)
        sleeper.kill()
        sleeper.wait()
        assert woken.wait(5.0), "the exit went unnoticed"
        woken.clear()
        other = subprocess.Popen(["sleep", "60"])
        try:
            watch.watch("svc", other.pid)
            watch.forget("svc")  # e.g. the agent stops it itself: no news
            other.kill()
            other.wait()
            assert not woken.wait(0.5)
        finally:
            other.kill()
            other.wait()
    finally:
        watch.stop()


def test_a_process_already_gone_is_left_to_the_pass():
    proc = subprocess.Popen(["true"])
    proc.wait()
    woken = threading.Event()
    watch = ExitWatch(woken.set)
    watch.watch("svc", proc.pid)
    assert not woken.wait(0.2)
    watch.stop()
