"""nodeos: the node service of a self-healing private cloud."""

__version__ = "0.1.0"
