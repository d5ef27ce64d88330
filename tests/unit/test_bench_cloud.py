"""The cloud benchmark's unavailability window, from a recorded poll history (pure)."""

from __future__ import annotations

import pytest

from nodeos.bench.cloud import unavailability
from nodeos.lab.lab import LabError


def polls(pattern: str, start: float = 10.0, step: float = 0.5) -> list[tuple[float, bool]]:
    return [(start + i * step, c == "+") for i, c in enumerate(pattern)]


def test_the_window_runs_from_the_last_answer_before_the_outage_to_the_first_after():
    history = polls("+++---++")  # answers at 10.0-11.0, failures 11.5-12.5, back at 13.0
    assert unavailability(history, fault_at=11.2) == pytest.approx(2.0)


def test_no_failed_poll_is_no_unavailability():
    assert unavailability(polls("++++++"), fault_at=11.0) == 0.0


def test_failures_before_the_fault_do_not_count_and_an_endless_outage_is_an_error():
    assert unavailability(polls("-+++++"), fault_at=10.6) == 0.0
    with pytest.raises(LabError, match="never answered again"):
        unavailability(polls("++---"), fault_at=10.6)
