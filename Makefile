# Developer and CI entry points; every target installs what it needs, so a fresh clone works.

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv tools run test bench clean

venv: $(VENV)/.installed

# Reinstalls only when pyproject.toml changes (the stamp is older than it).
$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

tools:
	command -v kcat >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kcat)

run: venv
	$(VENV)/bin/eventpipe run

test: venv tools
	$(PYTHON) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PYTHON) -m benchmarks.throughput

clean:
	rm -rf .data
