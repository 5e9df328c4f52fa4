"""Root of the test suite: loads the fixture modules, nothing else.

It must never define fixtures itself; add a module under tests/ and list it in `pytest_plugins`.
"""

pytest_plugins = [
    "tests.infra",  # broker, embedded_pg, pg_url, infra_settings, broker_proxy, pg_proxy
    "tests.pipeline",  # pipeline (Ray + Serve + actors), kcat
]
