# AMQP publishing gateway. `make help` lists the targets.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $$(scripts/ensure-python.sh) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## Create the virtualenv and install the pinned dependencies

services:  ## Make sure RabbitMQ and PostgreSQL run (installs them on Debian as root)
	scripts/ensure-services.sh rabbitmq postgres

run: venv  ## Run the gateway with config/pool.cfg (gunicorn, gevent workers)
	scripts/ensure-services.sh rabbitmq
	$(VENV)/bin/gunicorn -c gunicorn.conf.py

check-config: venv  ## Check a config file and exit non-zero on an error, like nginx -t (CONFIG=path, default GATEWAY_CONFIG or config/pool.cfg)
	$(PY) -m app.check_config $(CONFIG)

schema: venv  ## Apply config/schema.sql to the database GATEWAY_CONFIG names (idempotent)
	$(PY) -m app.dbschema

test: venv services  ## Run the whole test suite against the real brokers
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv  ## Benchmark the gateway against its baselines (wrk, management API, ...)
	scripts/ensure-services.sh rabbitmq
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/run.py

lint: venv  ## ruff and mypy
	$(VENV)/bin/ruff check app tests bench gunicorn.conf.py
	$(VENV)/bin/mypy

clean:  ## Remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

.PHONY: help venv services run check-config schema test bench lint clean
