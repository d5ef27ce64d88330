"""Benchmarks in the lab (formation, election, failover, load): they print
figures and write `bench-results/*.json`; nothing is asserted.
"""
