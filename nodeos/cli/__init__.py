"""The `nodeos` command line: one module per command group (main.py holds the
parser and the small commands; agent.py wires the agent process)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
