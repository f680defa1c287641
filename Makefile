# Two commands do every set-up step on a fresh machine:
#   make run    the engine on the embedded default (SQLite, in-process worker)
#   make test   the whole suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run serve test install clean

# Each step says what it does; pip prints one line per package (no progress bars, so a
# CI log or a pipe reads the same as a terminal).
PIP_INSTALL := $(BIN)/python -m pip --no-input install --progress-bar off

$(STAMP): pyproject.toml setup.py
	@echo "==> make: creating the virtual environment $(VENV) with $(PY)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "==> make: upgrading pip"
	$(PIP_INSTALL) --quiet --upgrade pip
	@echo "==> make: installing chartbridge and its dependencies (first time: a minute or two)"
	$(PIP_INSTALL) -e '.[dev]'
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

clean:
	rm -rf $(VENV) var build *.egg-info
