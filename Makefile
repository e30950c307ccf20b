# Every target sets up what it needs on a fresh machine: a virtualenv, the project, Debian's
# prometheus (where root and apt are available), Kafka jars (via Maven) and the geography index.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
AMB := $(BIN)/amb
STAMP := $(VENV)/.installed

.PHONY: help setup system-deps test lint typecheck unit demo bench chaos fuzz clean stack-down

help:
	@echo "make demo   - set up everything, start the stack and run the platform end to end"
	@echo "make test   - set up everything and run lint, type checks and the full test suite"
	@echo "make bench  - run every benchmark in bench/ and write bench/results.md"
	@echo "make chaos  - the full chaos suite: kill -9, broker restarts, two workers; store == oracle"
	@echo "make fuzz   - atheris fuzzing of the decoders, parsers and the SQL guard"
	@echo "make clean  - stop the local stack and remove .amb/ and .venv/"

$(STAMP): pyproject.toml native/Cargo.toml $(wildcard native/src/*.rs)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@PATH="$$HOME/.cargo/bin:$$PATH"; if command -v cargo >/dev/null; then $(BIN)/pip install -q ./native; \
	else echo "WARNING: cargo not found: amb_native not built; amb publish reads CSV row by row"; fi
	@touch $(STAMP)

# Debian's prometheus (server + promtool) for the local stack and rule tests. Skipped, loudly,
# where apt or root is not available; the tests that need it then say so.
system-deps:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's prometheus (server and promtool)"; \
	  (apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends prometheus >/dev/null)) \
	  && systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	  pkill -x prometheus >/dev/null 2>&1 || true; \
	else echo "WARNING: prometheus not installed and apt/root unavailable: Prometheus parts will be skipped"; fi
	@command -v java >/dev/null || { echo "error: java (17+) not found: install a JDK (apt-get install openjdk-17-jre-headless)"; exit 2; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven (apt-get install maven)"; exit 2; }
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium (the web page's browser test)"; \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null) || \
	  echo "WARNING: chromium not installed: the web page browser test will be skipped"; \
	else echo "WARNING: chromium not installed and apt/root unavailable: the web page browser test will be skipped"; fi

setup: $(STAMP) system-deps
	$(AMB) stack install
	$(AMB) geo build

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q

demo: setup
	$(AMB) demo

bench: setup
	$(BIN)/python bench/run_all.py

chaos: setup
	$(BIN)/python tests/chaos/run_chaos.py

fuzz: setup
	$(BIN)/python tests/fuzz/atheris_targets.py --all -runs=200000 -max_len=512

stack-down:
	-$(AMB) stack down

clean: stack-down
	rm -rf .amb $(VENV)
