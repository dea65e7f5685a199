# The two Quickstart commands: `make run` and `make test`. Everything else is a helper of theirs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=
CONFIG_NAMESPACES := --namespace midonet_membership --namespace oslo.policy --namespace keystonemiddleware.auth_token

.PHONY: run test venv venv-test screenshots lint bench sample-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

## Start the all-in-one (API + importer + embedded SQLite NSDB) on 127.0.0.1:9696.
run: venv
	$(BIN)/midonet-membership all-in-one $(RUN_ARGS)

## Run the whole suite against real PostgreSQL, MariaDB, ZooKeeper and network namespaces.
test: venv-test
	tools/ensure-mysqlclient $(VENV)
	tools/ensure-zookeeper
	tools/ensure-netns-tools
	tools/ensure-openstack
	tools/ensure-chromium
	tools/ensure-prometheus
	tools/ensure-galera
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Retake the README's console screenshots (docs/console-*.png) with the console tests.
screenshots: venv-test
	tools/ensure-chromium
	MM_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/e2e/test_console.py

lint: venv-test
	$(BIN)/ruff check .

## The API against its floors and neutron 29 (bench/api.py): the tables on the terminal,
## the JSON in var/.
bench: venv-test
	tools/ensure-mysqlclient $(VENV)
	tools/ensure-openstack neutron
	mkdir -p var
	$(BIN)/python bench/api.py $(BENCH_ARGS) > var/bench-api.json
	@echo "all figures: var/bench-api.json"

## Regenerate the checked-in samples under etc/ (a test fails when they are stale).
sample-config: venv
	$(BIN)/oslo-config-generator $(CONFIG_NAMESPACES) --output-file etc/midonet-membership.conf.sample
	$(BIN)/oslopolicy-sample-generator --namespace midonet_membership --output-file etc/policy.yaml.sample

clean:
	rm -rf $(VENV) var
