# Every target creates and reuses .venv; `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exact versions setup installs (pyproject.toml holds the ranges); `make constraints` regenerates it.
CONSTRAINTS := constraints.txt

.PHONY: setup constraints test test-fast demo bench lint ui clean

setup: $(STAMP)

# torch first, from TORCH_SPEC (a CPU build lies on local disk; an open range would pull a CUDA build), then the
# project with every other package at its constraints.txt version.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test,dev,deploy]"
	touch $(STAMP)

# A fresh resolve of pyproject.toml's ranges in a throw-away venv (torch from TORCH_SPEC first, as setup does; no
# -c), frozen into constraints.txt: the project itself left out, torch's build tag (+cpu) dropped. Then `make test`.
constraints:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/python" -m pip install -q "$(TORCH_SPEC)"; \
	"$$tmp/venv/bin/python" -m pip install -q -e ".[test,dev,deploy]"; \
	{ printf '%s\n' \
	    "# Exact versions \`make setup\` installs (pip install -c constraints.txt): the set the code was last checked" \
	    "# against. pyproject.toml holds the ranges; regenerate this file with \`make constraints\` (README: Dependencies" \
	    "# and upgrading). torch is pinned without its local build tag (+cpu, +cu128), so any build of the version fits."; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" $(CONSTRAINTS)

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time (loadfile: a file's module
# fixtures are built once; worksteal, which builds them in both, took 13.5 min against 12). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PY) -m ruff check .
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

demo: setup
	$(VENV)/bin/gpnas demo

bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: setup
	$(PY) -m ruff check .

ui: setup
	$(VENV)/bin/gpnas ui demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
