# Two commands do every set-up step on a fresh machine:
#   make run    the engine on the embedded default (SQLite, in-process worker)
#   make test   the whole suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve test install lock clean

# Each step says what it does; pip prints one line per package (no progress bars, so a
# CI log or a pipe reads the same as a terminal).
PIP_INSTALL := $(BIN)/python -m pip --no-input install --progress-bar off

$(STAMP): pyproject.toml setup.py constraints.txt
	@echo "==> make: creating the virtual environment $(VENV) with $(PY)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> make: upgrading pip"
	$(PIP_INSTALL) --quiet --upgrade pip
	@echo "==> make: installing chartbridge and its dependencies (first time: a minute or two)"
	$(PIP_INSTALL) -c constraints.txt -e '.[dev]'
	touch $(STAMP)
	@echo "==> make: installed; next: $(BIN)/chartbridge --help"

install: $(STAMP)

run: install
	@echo "==> make: running one whole visit (chartbridge demo)"
	$(BIN)/chartbridge demo

serve: install
	$(BIN)/chartbridge db upgrade
	$(BIN)/chartbridge serve

test: install
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# constraints.txt: the exact tested set every install uses (`pip install -c`). After changing
# pyproject.toml's dependencies, re-resolve it with pip-tools and commit it with the change.
lock: install
	$(PIP_INSTALL) --quiet 'pip-tools>=7.4,<8'
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
	    --no-emit-find-links --output-file constraints.txt pyproject.toml

clean:
	rm -rf $(VENV) var build *.egg-info
