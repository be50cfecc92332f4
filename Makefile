# `make serve` and `make test` do all the set-up a fresh Debian machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= ./data

# Without a config file or another driver, serve from ./data. Only the serving
# targets get this: tests start their own servers with their own environment.
ifeq ($(REGISTRY_CONFIGURATION_PATH)$(filter-out filesystem,$(REGISTRY_STORAGE)),)
ROOTDIR := $(or $(REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY),$(abspath $(DATA)))
SERVE_ENV := REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$(ROOTDIR)
PREPARE_DATA := mkdir -p $(ROOTDIR)
else
PREPARE_DATA := true
endif

.PHONY: serve test test-backends lint bench system-deps venv chalice-local clean

# The HTTP suites, and the OCI conformance suite, that run again on every other
# storage and cache backend
API_SUITES := tests/test_api_pull.py tests/test_api_push.py tests/test_api_discovery.py \
	tests/test_api_management.py tests/test_api_bad_input.py \
	tests/test_oci_conformance.py::test_official_conformance_suite_passes
BACKENDS := s3 azure rados redis
# junit XML per run and conformance.jsonl, for the summary `make test` ends with
REPORTS := $(VENV)/test-reports
PYTEST := STRATUS_TEST_REPORTS=$(abspath $(REPORTS)) $(PY) -m pytest -q -ra

$(STAMP): requirements.txt requirements-server.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(PREPARE_DATA)
	$(SERVE_ENV) $(VENV)/bin/stratus serve

chalice-local: $(STAMP)
	$(PREPARE_DATA)
	$(SERVE_ENV) $(VENV)/bin/chalice local --host 127.0.0.1 --port $(or $(PORT),8000) --no-autoreload --stage local

system-deps:
	sh scripts/install-system-deps.sh

# The suites that mostly wait on clients, gzip, moto, Azurite, the Functions host and
# terraform run in a second pytest beside the main one, about as long as it (5: a
# PYTEST_ARGS filter left none of them to run).
LONG_SUITES := tests/test_relay_large.py tests/test_terraform.py tests/test_gc_scheduled.py \
	tests/test_azure_functions.py tests/test_relay.py

# Every stage runs even after one fails, so the summary covers them all; the exit
# status is still a failure then.
test: system-deps $(STAMP)
	@rm -rf $(REPORTS) && mkdir -p $(REPORTS)
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	echo "== all tests on filesystem ($(LONG_SUITES) beside them)"; \
	$(PYTEST) --junitxml=$(REPORTS)/long.xml $(PYTEST_ARGS) $(LONG_SUITES) > $(REPORTS)/long.log 2>&1 & long=$$!; \
	$(PYTEST) --junitxml=$(REPORTS)/filesystem.xml $(addprefix --ignore=,$(LONG_SUITES)) $(PYTEST_ARGS) || status=1; \
	wait $$long; long_status=$$?; echo "== $(LONG_SUITES)"; cat $(REPORTS)/long.log; \
	[ $$long_status -eq 0 ] || [ $$long_status -eq 5 ] || status=1; \
	$(MAKE) --no-print-directory test-backends || status=1; \
	$(PY) -m tests.report $(REPORTS); \
	exit $$status

# BACKEND_JOBS backends at a time (each starts its own servers on free ports); the
# output of each is printed whole when it ends.
BACKEND_JOBS ?= 2
test-backends: $(STAMP)
	@mkdir -p $(REPORTS)
	@printf '%s\n' $(BACKENDS) | xargs -P $(BACKEND_JOBS) -n 1 sh -c '\
		STRATUS_TEST_BACKEND=$$0 $(PYTEST) --junitxml=$(REPORTS)/$$0.xml $(API_SUITES) \
			> $(REPORTS)/$$0.log 2>&1; status=$$?; \
		echo "== HTTP and conformance suites on $$0"; cat $(REPORTS)/$$0.log; exit $$status' \
		|| { echo "test-backends: a backend failed (see above)"; exit 1; }

# ruff and mypy, each with its settings in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: system-deps $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache

# The Lambda deployment package: $(PACKAGE_DIR)/deployment.zip (app.py, chalicelib/ and
# requirements.txt's wheels for the Lambda platform) and the SAM template sam.json.
# `chalice package` refuses to run without a region ("No region configured"); the
# region does not change the zip. infra/terraform/aws deploys this zip (its
# package_path default); `STAGE=prod make package` packages the prod stage. The zip
# then gets bytecode (scripts/precompile_package.py): /var/task is read-only, so
# without it every new instance compiles every module it imports.
PACKAGE_DIR ?= build/lambda
STAGE ?= dev
.PHONY: package
package: $(STAMP)
	rm -f $(PACKAGE_DIR)/deployment.zip $(PACKAGE_DIR)/sam.json
	AWS_DEFAULT_REGION=$(or $(AWS_DEFAULT_REGION),$(AWS_REGION),us-east-1) \
		$(VENV)/bin/chalice package --stage $(STAGE) $(PACKAGE_DIR)
	$(PY) scripts/precompile_package.py $(PACKAGE_DIR)/deployment.zip $(PACKAGE_DIR)/sam.json
	@echo "$(PACKAGE_DIR)/deployment.zip: $$(du -h $(PACKAGE_DIR)/deployment.zip | cut -f1)"
