# Conveyor. `make run` for a local stack, `make test` for the whole suite. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.installed-app
PORT ?= 8000
QUEUES ?= default
CONCURRENCY ?= 2

.PHONY: install install-app run web worker beat test services bench chaos clean

# What the app needs (run, web, worker, beat), then the test extras on top (about as long again to
# install: pytest, playwright, schemathesis, ...), which only the test and bench targets need.
$(APP_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	$(PY) -m algorithms.remote.proto  # gRPC stubs into algorithms/remote/_generated/ (git-ignored)
	touch $(APP_STAMP)

$(STAMP): $(APP_STAMP)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The dashboard (dashboard/, Vite + Alpine.js) is built into dashboard/dist/, served by Django.
DASHBOARD := dashboard/dist/index.html
$(DASHBOARD): dashboard/package.json dashboard/package-lock.json dashboard/vite.config.js dashboard/index.html $(wildcard dashboard/src/*)
	cd dashboard && npm ci --no-audit --no-fund --loglevel=error && npm run build

install-app: $(APP_STAMP) $(DASHBOARD)
	mkdir -p native/build && $(CC) -O2 -Wall -Wextra -o native/build/hello native/hello.c  # native.hello (algorithms/external.toml)

install: install-app $(STAMP)

services:
	scripts/ensure_services.sh

# These run on RabbitMQ as well as Redis: without it they must stop, not skip its half.
test bench chaos: export REQUIRE_RABBITMQ := 1

test: install services
	scripts/ensure_chromium.sh  # the dashboard's browser test (tests/live/test_dashboard_browser.py)
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks against raw Celery and a bare endpoint, on Redis and RabbitMQ (docs/benchmarks.md).
bench: install services
	$(PY) -m bench.bench_costs
	$(PY) -m bench.bench_throughput $(BENCH_ARGS)

# WebSocket push latency/throughput (200 sockets, 50 tasks) against a bare channels-redis hop.
bench-ws: install services
	$(PY) -m bench.bench_ws $(BENCH_ARGS)

# The fault scenarios at full size (make test runs them reduced).
chaos: install services
	CHAOS_SCALE=full $(PY) -m pytest tests/chaos -v $(PYTEST_ARGS)

run: install-app
	$(PY) scripts/run_local.py --port $(PORT)

web: install-app
	$(VENV)/bin/daphne -b 0.0.0.0 -p $(PORT) --access-log /dev/null config.asgi:application

worker: install-app
	$(VENV)/bin/celery -A config worker -Q $(QUEUES) -c $(CONCURRENCY) -l info

beat: install-app
	$(VENV)/bin/celery -A config beat -l info

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
