# Two commands matter: `make run` and `make test`. Everything installs itself into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit venv clean fuzz bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Findings in the bundled sample log, then the live webhook on 127.0.0.1:8443 (certificates,
# apiserver files and the kubectl/apiserver snippet are written to certs/ on the first run).
run: $(STAMP)
	$(BIN)/ua-sentinel replay tests/data/audit/audit-2026-11-27T18-10-45.450.log tests/data/audit/audit.log
	$(BIN)/python -m webhook.tools.devrun

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: lint typecheck
	$(BIN)/pytest -q

# Long coverage-guided runs (the suite runs each target briefly). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	for t in useragent allowlist audit_line admission detector_times scan; do \
		$(BIN)/python -m tests.fuzz.run_atheris $$t -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
			-artifact_prefix=tests/fuzz/ tests/fuzz/corpus/$$t || exit 1; \
	done

# Issue 6's benchmarks (~12 min): appends a dated section to bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The 10-minute soak: 300 admission reviews/s + 2,000 audit events/s from separate processes;
# prints p99 and RSS. `make test` runs the same test for 60 s.
.PHONY: soak
soak: $(STAMP)
	UA_SENTINEL_SOAK_SECONDS=600 $(BIN)/pytest -q -s -p no:cacheprovider tests/hardening/test_soak.py
