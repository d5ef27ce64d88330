"""Fault campaigns (`nodeos chaos`): a seeded schedule of faults, neutral observers recording a
history, invariant checkers over that history, and a recovery report.

The schedule, the checkers and the report are pure functions of their inputs (the seed, the
recorded history), unit-tested without a network; only the runner touches a cluster.
"""

from .history import History, Record
from .invariants import Violation, Window, check, unavailability_windows

__all__ = ["History", "Record", "Violation", "Window", "check", "unavailability_windows"]
