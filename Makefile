# AMQP publishing gateway. `make help` lists the targets.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

LOCK    ?= requirements/dev.txt
TOOLS   := $(VENV)/tools
# uv resolves for the image's Python on Linux, keeping the versions already locked
# unless asked: make lock UPGRADE="--upgrade-package pika" (or UPGRADE=--upgrade).
UPGRADE ?=
COMPILE := $(VENV)/tools/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
           --python-platform linux --custom-compile-command 'make lock' $(UPGRADE)

# Every install is from a hashed lock (--require-hashes): the same program on every machine.
# The app itself goes in with --no-deps, so nothing outside the lock can slip in.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $$(scripts/ensure-python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	@touch $(STAMP)

venv: $(STAMP)  ## Create the virtualenv and install the locked dependencies

lock: $(TOOLS)/.installed  ## Regenerate the hashed lock files in requirements/ from pyproject.toml
	$(COMPILE) pyproject.toml -o requirements/runtime.txt
	$(COMPILE) pyproject.toml --extra dev -o requirements/dev.txt
	$(COMPILE) pyproject.toml --extra dev --extra bench -o requirements/bench.txt
	$(COMPILE) requirements/tools.in -o requirements/tools.txt

$(TOOLS)/.installed: requirements/tools.txt
	@test -x $(TOOLS)/bin/python || $$(scripts/ensure-python.sh) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes --no-deps -r requirements/tools.txt
	@touch $@

services:  ## Make sure RabbitMQ and PostgreSQL run (installs them on Debian as root)
	scripts/ensure-services.sh rabbitmq postgres

run: venv  ## Run the gateway with config/pool.cfg (gunicorn, gevent workers)
	scripts/ensure-services.sh rabbitmq
	$(VENV)/bin/gunicorn -c gunicorn.conf.py

check-config: venv  ## Check a config file and exit non-zero on an error, like nginx -t (CONFIG=path, default GATEWAY_CONFIG or config/pool.cfg)
	$(PY) -m app.config.check $(CONFIG)

schema: venv  ## Apply config/schema.sql to the database GATEWAY_CONFIG names (idempotent)
	$(PY) -m app.db.schema

test: venv services $(TOOLS)/.installed  ## Run the whole test suite against the real brokers
	$(PY) -m pytest $(PYTEST_ARGS)

image-test: venv services  ## Build the Dockerfile and run the image as the Deployment does (starts dockerd if needed)
	$(PY) -m pytest -m image tests/image $(PYTEST_ARGS)

cluster-test: venv services  ## Fault scenarios and a rolling restart against a RabbitMQ cluster of its own (5801-5803)
	scripts/ensure-services.sh haproxy
	$(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

check-deploy: $(TOOLS)/.installed  ## Render deploy/ (base and overlays) and run checkov on them, offline
	$(PY) -m pytest tests/unit/test_deploy.py $(PYTEST_ARGS)

bench: venv  ## Benchmark the gateway against its baselines (wrk, management API, ...)
	scripts/ensure-services.sh rabbitmq
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/bench.txt
	$(PY) bench/run.py

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check app tests bench gunicorn.conf.py
	$(VENV)/bin/mypy

clean:  ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv lock services run check-config schema test image-test cluster-test check-deploy bench lint clean
