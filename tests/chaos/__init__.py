"""Chaos suite: faults injected into the running pipeline while a workload runs, then a Jepsen-style check.

Scenarios use the `scenario` fixture (tests/chaos/conftest.py) and the API in tests/chaos/harness.py.
"""
