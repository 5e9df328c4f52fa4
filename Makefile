# Developer and CI entry points; every target installs what it needs, so a fresh clone works.

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv tools run test chaos bench bench-idle bench-scaling clean

venv: $(VENV)/.installed

# Reinstalls only when pyproject.toml changes (the stamp is older than it).
$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

# Debian tools the tests use: kcat (a Kafka client we did not write), stress-ng (CPU load), promtool (alert rules),
# chromium and chromedriver (the status page test drives a headless browser).
tools:
	command -v kcat >/dev/null 2>&1 && command -v stress-ng >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && \
		command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq kcat stress-ng prometheus chromium chromium-driver)

run: venv
	$(VENV)/bin/eventpipe run

test: venv tools
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# The chaos suite with 30 s faults; prints the table and writes .data/chaos-report.md (`make test` runs 3 s faults).
chaos: venv tools
	EVENTPIPE_CHAOS_FAULT_S=30 $(PYTHON) -m pytest tests/chaos -p no:randomly -q $(PYTEST_ARGS)

# Against a running `make run`: throughput, latencies and CPU µs per event by component. DATABASE_URL is passed on
# when set; otherwise the benchmark reads the embedded PostgreSQL's port from $$EVENTPIPE_DATA_DIR (default .data).
BENCH_ARGS ?= --rate 10000 --duration 60 --batch-size 500
IDLE_S ?= 60
SCALING_ARGS ?= --partitions 1,2,4,8 --rate 20000 --duration 30
BENCH_DB = $(if $(DATABASE_URL),--database-url "$(DATABASE_URL)")

bench: venv
	$(PYTHON) -m benchmarks.throughput $(BENCH_DB) $(BENCH_ARGS)

# Against a running `make run` with no traffic: CPU % of one core and RSS by component.
bench-idle: venv
	$(PYTHON) -m benchmarks.throughput $(BENCH_DB) --idle $(IDLE_S)

# Starts its own stacks (one at a time, under /tmp/eventpipe-stack.lock), one per partition count per topic.
bench-scaling: venv
	$(PYTHON) -m benchmarks.scaling $(SCALING_ARGS)

clean:
	rm -rf .data
