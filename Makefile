# Two commands set everything up on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
# The newest CPython 3.11+ on the machine (pyenv installs included); override with PYTHON=...
PYTHON ?= $(shell for p in python3.13 python3.12 $$HOME/.pyenv/versions/3.13*/bin/python3 \
	$$HOME/.pyenv/versions/3.12*/bin/python3 python3.11 python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo $$p; break; }; done)
PIP := $(VENV)/bin/python -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-all-pythons docs lint format bench bench-workers bench-startup \
	bench-connections autobahn clean install

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "Error: no CPython 3.11+ found; set PYTHON=/path/to/python3" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Also rebuilt when a compiled module changes: an editable install keeps its compiled copies.
# They sit in src/ beside the source, so this interpreter's are deleted first: when the compile
# fails (setup.py then installs the pure-Python hot path) none from an earlier build lingers to
# be imported. Other interpreters' copies (.venv-3.11, ...) have other names and stay.
HOT_PATH := $(addprefix src/aserve/,protocols/cycle.py protocols/http.py protocols/http2.py \
	protocols/headers.py protocols/hpack.py protocols/wsframes.py state.py flow_control.py \
	tasks.py metrics.py)
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py $(HOT_PATH)
	find src -name "*$$($(VENV)/bin/python -c \
		'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX") or ".none")')" -delete
	$(PIP) install -q -e .
	@touch $@

# An extra's packages, one a line, from pyproject.toml. They are installed on their own, beside
# aserve's editable install: `pip install -e '.[dev]'` would build aserve again (a second mypyc
# compile of the hot path, a minute or more). The editable install is made first, so that a
# changed hot path is rebuilt before the tests run.
EXTRA_REQUIREMENTS = $(VENV)/bin/python -c 'import sys, tomllib; \
	extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; \
	print("\n".join(r for extra in sys.argv[1:] for r in extras[extra]))'

$(VENV)/.installed-dev: $(VENV)/bin/python pyproject.toml | $(VENV)/.installed
	$(EXTRA_REQUIREMENTS) dev | $(PIP) install -q -r /dev/stdin
	@touch $@

$(VENV)/.installed-bench: $(VENV)/bin/python pyproject.toml | $(VENV)/.installed
	$(EXTRA_REQUIREMENTS) bench dev | $(PIP) install -q -r /dev/stdin
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/aserve demo:app --app-dir examples --host 127.0.0.1 --port 8000

LINT_PATHS := setup.py src tests benchmarks examples

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

# The suite runs on the hot path as installed, then, if that is compiled, on its Python source.
# Tests marked `once` (whole processes: supervisor, scale, e2e) do not depend on which variant
# of the hot path runs, so the second pass leaves them out. Each pass spreads its tests over
# TEST_WORKERS processes (pytest-xdist): most tests wait on sockets, timers and child processes
# rather than on the CPU, so 4 workers on 2 cores take half the time of one or less.
# TEST_WORKERS=0 runs a pass in one process.
TEST_WORKERS ?= 4
PYTEST := $(VENV)/bin/python -m pytest \
	$(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)
test: lint
	$(PYTEST) $(PYTEST_ARGS)
	@if $(VENV)/bin/python -c 'import sys, aserve.protocols.http as h; sys.exit(not h.COMPILED)'; \
	then echo "== again on the pure-Python hot path (ASERVE_NO_EXTENSIONS=1) =="; \
	ASERVE_NO_EXTENSIONS=1 $(PYTEST) -m 'not once' $(PYTEST_ARGS); fi

# aserve behind real nginx and HAProxy (tests/e2e): installs them with apt-get when missing (with
# nghttp2-client and Chromium, which tests/test_http2.py drives). If that fails (not root, no
# registry) the tests still run and show as skipped, naming the binary.
.PHONY: test-e2e
test-e2e: $(VENV)/.installed-dev
	@bash tests/e2e/install-proxies.sh || echo "WARNING: tests/e2e will be skipped (see above)" >&2
	$(VENV)/bin/python -m pytest tests/e2e -rsx $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	$(VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

# Workers: requests per CPU-second of every server process (--workers 2), and start-up time and
# PSS of `--workers 4` on FastAPI. See benchmarks/README.md.
bench-workers: $(VENV)/.installed-bench
	$(VENV)/bin/python benchmarks/workers.py $(BENCH_ARGS)

bench-startup: $(VENV)/.installed-bench
	$(VENV)/bin/python benchmarks/startup_memory.py $(BENCH_ARGS)

# 100,000 keep-alive connections held at once against `--workers 6` (each worker under a
# 20,000-descriptor limit), opened by 6 client processes; aserve beside uvicorn. Several
# minutes; not part of make test. See benchmarks/README.md.
bench-connections: $(VENV)/.installed-bench
	$(VENV)/bin/python benchmarks/connections.py --workers 6 --idle 100000 --clients 6 \
		--servers aserve,uvicorn $(BENCH_ARGS)

# The documentation site, built strictly (a broken link or anchor fails) into site/. Needs only
# the docs extra's packages, not aserve itself, so it is quick on a fresh clone.
$(VENV)/.installed-docs: $(VENV)/bin/python pyproject.toml
	$(EXTRA_REQUIREMENTS) docs | $(PIP) install -q -r /dev/stdin
	@touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# `make test` on every supported CPython the machine has, one venv each (.venv-3.11, ...);
# says which versions ran and which the machine lacks, and fails if none ran.
SUPPORTED_PYTHONS := 3.11 3.12 3.13
test-all-pythons:
	@set -e; ran=""; missing=""; \
	for version in $(SUPPORTED_PYTHONS); do \
		found=""; \
		for candidate in python$$version $$HOME/.pyenv/versions/$$version.*/bin/python3; do \
			if $$candidate -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$$version'" \
				>/dev/null 2>&1; then found=$$candidate; break; fi; \
		done; \
		if [ -z "$$found" ]; then missing="$$missing $$version"; continue; fi; \
		echo "== CPython $$version ($$found) =="; \
		$(MAKE) --no-print-directory test PYTHON=$$found VENV=.venv-$$version; \
		ran="$$ran $$version"; \
	done; \
	echo "== suite passed on CPython$${ran:- none}$${missing:+; not on this machine:$$missing} =="; \
	test -n "$$ran"

autobahn: $(VENV)/.installed-dev
	$(VENV)/bin/python benchmarks/autobahn.py $(AUTOBAHN_ARGS)

# HTTP/2 conformance: h2spec (generic, http2, hpack, strict) over h2c and over TLS, both passing
# completely. Builds h2spec from ../shared/vendor/h2spec with Debian's Go packages on first use.
.PHONY: h2spec
h2spec: $(VENV)/.installed-dev
	$(VENV)/bin/python tests/h2spec/run.py $(H2SPEC_ARGS)

# Coverage-guided fuzzing (atheris, libFuzzer) of the HTTP/1.1 request path, then of the HTTP/2
# frame layer, for FUZZ_SECONDS each; not part of make test. Inputs that break a property are
# saved as crash-* in .fuzz/. The hot path runs as Python source so that atheris sees its
# coverage (ASERVE_NO_EXTENSIONS=0: the compiled one).
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed-dev
	$(PIP) install -q atheris
	mkdir -p .fuzz/corpus .fuzz/corpus-h2
	cd .fuzz && ASERVE_NO_EXTENSIONS=$${ASERVE_NO_EXTENSIONS-1} ../$(VENV)/bin/python \
		../tests/fuzz/fuzz_requests.py -max_total_time=$(FUZZ_SECONDS) corpus
	cd .fuzz && ASERVE_NO_EXTENSIONS=$${ASERVE_NO_EXTENSIONS-1} ../$(VENV)/bin/python \
		../tests/fuzz/fuzz_http2.py -max_total_time=$(FUZZ_SECONDS) corpus-h2

clean:
	rm -rf $(VENV) .venv311 .venv-3.* site build src/*.egg-info .pytest_cache .ruff_cache
	find src -name '*.so' -delete
